# frozen_string_literal: true

RSpec.describe "the app thread pool" do
  it "adds threads while all are blocked with the GVL free, up to the maximum" do
    server = start_butterflies("-t", "2:8", "--io-threads", "1")
    expect(server.output).to include("threads: 2-8 app")
    sleepers = Array.new(6) { Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=2"))) } }
    # Six requests sleeping at once need six app threads: the pool grew.
    expect(server.wait_for_matches(/app: sleeping 2.0/, 6, timeout: 10)).to be(true)
    expect(Net::HTTP.get(URI(server.url("/threads"))).to_i).to be_between(7, 8)
    expect(sleepers.map { |t| t.value.code }).to eq(["200"] * 6)
  end

  it "keeps a fixed count with -t N" do
    server = start_butterflies("-t", "2", "--io-threads", "1")
    sleepers = Array.new(2) { Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=1"))) } }
    expect(server.wait_for_matches(/app: sleeping 1.0/, 2, timeout: 10)).to be(true)
    # Both threads are asleep; this request waits for one of them rather
    # than getting a new thread.
    expect(Net::HTTP.get(URI(server.url("/threads")))).to eq("2")
    expect(sleepers.map { |t| t.value.code }).to eq(["200"] * 2)
  end
end
