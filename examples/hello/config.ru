# frozen_string_literal: true

# The smallest Rack app: 12 bytes of text.
run ->(_env) { [200, { "content-type" => "text/plain" }, ["Hello world!"]] }
