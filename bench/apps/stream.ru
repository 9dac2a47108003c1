# frozen_string_literal: true

# An each-body of 100 chunks of 100 bytes.
CHUNK = ("y" * 100).freeze
body = Class.new do
  def each
    100.times { yield CHUNK }
  end
end
run ->(_env) { [200, { "content-type" => "text/plain" }, body.new] }
