# frozen_string_literal: true

# GET /big: 8 MiB (for clients that never read it); anything else: "ok".
BIG = ("x" * (8 << 20)).freeze
run lambda { |env|
  body = env["PATH_INFO"] == "/big" ? BIG : "ok"
  [200, { "content-type" => "application/octet-stream", "content-length" => body.bytesize.to_s }, [body]]
}
