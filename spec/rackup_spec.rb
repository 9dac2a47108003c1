# frozen_string_literal: true

RSpec.describe "rackup -s butterflies" do
  it "serves the app through the real rackup and stops on SIGINT" do
    rackup = Gem.bin_path("rack", "rackup")
    server = ServerProcess.start(
      [*ServerHelpers::RUBY, rackup, "-s", "butterflies", "-o", "127.0.0.1", "-p", "0", ServerHelpers::APP]
    )
    (@servers ||= []) << server
    res = Net::HTTP.get_response(URI(server.url("/")))
    expect(res.body).to eq("Hello world!")
    big = Random.new(7).bytes(256 * 1024)
    echoed = Net::HTTP.start(server.host, server.port) { |h| h.post("/echo", big).body }
    expect(echoed.b == big).to be(true)
    server.signal("INT")
    expect(server.wait(timeout: 10)&.exitstatus).to eq(0)
  end

  it "is found by Rack::Handler.get" do
    script = 'require "rack"; require "rack/handler"; p Rack::Handler.get("butterflies")'
    out = IO.popen([*ServerHelpers::RUBY, "-e", script], err: %i[child out], &:read)
    expect(out).to eq("Rack::Handler::Butterflies\n")
  end
end
