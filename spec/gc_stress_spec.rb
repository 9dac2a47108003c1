# frozen_string_literal: true

require "json"

RSpec.describe "serving under GC.stress", timeout: 300 do
  it "keeps env, bodies and headers intact while the GC runs at every allocation" do
    server = start_butterflies("-t", "2", "--io-threads", "1",
                               rackup: File.join(ServerHelpers::ROOT, "spec/fixtures/gc_stress.ru"))
    Net::HTTP.start(server.host, server.port, read_timeout: 120) do |http|
      gc_before = http.get("/gc").body[/count=(\d+)/, 1].to_i
      expect(http.get("/gc").body).not_to start_with("stress=false")
      body = Random.new(3).bytes(64 * 1024)
      3.times do
        expect(http.post("/echo", body).body.b == body).to be(true)
        env = JSON.parse(http.get("/env?q=1", "X-Custom" => "yes").body)
        expect(env).to include("QUERY_STRING" => "q=1", "HTTP_X_CUSTOM" => "yes", "PATH_INFO" => "/env")
        expect(http.get("/cookies").get_fields("Set-Cookie")).to eq(%w[a=1 b=2])
        expect(http.get("/stream").body).to eq("part0\npart1\npart2\n")
        expect(http.get("/boom").code).to eq("500")
      end
      gc_after = http.get("/gc").body[/count=(\d+)/, 1].to_i
      expect(gc_after - gc_before).to be > 1000
    end
    expect(server.stop&.exitstatus).to eq(0)
  end

  it "reaches every server the suite starts in GC stress mode (BUTTERFLIES_SPEC_GC_STRESS)" do
    skip "the suite is not in GC stress mode" unless GcStressMode.on?

    server = start_butterflies
    expect(Net::HTTP.get(URI(server.url("/gc")))).to start_with("stress=#{Integer(GcStressMode::FLAGS)} ")
  end
end
