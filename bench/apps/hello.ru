# frozen_string_literal: true

# 12 bytes of text: measures the server, not the app.
run ->(_env) { [200, { "content-type" => "text/plain" }, ["Hello world!"]] }
