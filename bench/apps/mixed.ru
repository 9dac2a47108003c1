# frozen_string_literal: true

# Hello, and /slow which sleeps 50 ms: fast requests must not wait behind
# slow ones.
run lambda { |env|
  sleep 0.05 if env["PATH_INFO"] == "/slow"
  [200, { "content-type" => "text/plain" }, ["Hello world!"]]
}
