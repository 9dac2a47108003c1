# frozen_string_literal: true

# TechEmpower's plaintext test: "Hello, World!" as text/plain, measured
# with 16 pipelined requests per connection (bench/pipeline.lua).
run ->(_env) { [200, { "content-type" => "text/plain" }, ["Hello, World!"]] }
