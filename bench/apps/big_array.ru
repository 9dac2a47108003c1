# frozen_string_literal: true

# "/": 12 bytes of text. "/big": an Array body of 16 strings of 1 MiB (made
# once), for slow-reader scenarios (bench/hostile slow-readers).
CHUNKS = Array.new(16) { ("z" * (1 << 20)).freeze }.freeze
run lambda { |env|
  if env["PATH_INFO"] == "/big"
    mb = Integer(env["QUERY_STRING"][/mb=(\d+)/, 1] || "16").clamp(1, 16)
    [200, { "content-type" => "application/octet-stream" }, CHUNKS.first(mb)]
  else
    [200, { "content-type" => "text/plain" }, ["Hello world!"]]
  end
}
