# frozen_string_literal: true

# Reads rack.input in 16 KiB reads and returns the byte count.
run lambda { |env|
  input = env["rack.input"]
  total = 0
  buffer = +""
  while input.read(16_384, buffer)
    total += buffer.bytesize
  end
  [200, { "content-type" => "text/plain" }, [total.to_s]]
}
