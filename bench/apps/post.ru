# frozen_string_literal: true

# Reads rack.input in 16 KiB reads and returns the byte count.
run lambda { |env|
  input = env["rack.input"]
  total = 0
  buffer = +""
  total += buffer.bytesize while input.read(16_384, buffer)
  [200, { "content-type" => "text/plain" }, [total.to_s]]
}
