# frozen_string_literal: true

# One 1 MiB string.
BIG = ("x" * (1 << 20)).freeze
run ->(_env) { [200, { "content-type" => "application/octet-stream" }, [BIG]] }
