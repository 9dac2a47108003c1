# frozen_string_literal: true

# Sleeps 50 ms (an app waiting on a database or an API).
run lambda { |_env|
  sleep 0.05
  [200, { "content-type" => "text/plain" }, ["slept"]]
}
