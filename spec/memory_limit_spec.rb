# frozen_string_literal: true

require "json"
require "net/http"

# worker_memory_limit and worker_memory_hard_limit, with an app that grows
# on request: the worker that grew is replaced (a successor first) or
# killed, the other is left alone, and the restart is counted as "memory".
RSpec.describe "worker memory limits", timeout: 180 do
  include ClusterHelpers

  around do |example|
    Dir.mktmpdir do |dir|
      @rackup = File.join(dir, "config.ru")
      File.write(@rackup, <<~RUBY)
        hog = []
        run lambda { |env|
          megabytes = env["QUERY_STRING"][/mb=(\\d+)/, 1].to_i
          hog << ("x" * (megabytes * 1024 * 1024)) # written, so private to this worker
          [200, { "content-type" => "text/plain" }, [Process.pid.to_s]]
        }
      RUBY
      example.run
    end
  end

  def start(*limits)
    @control = free_port
    start_cluster(*limits, "--control-url", "tcp://127.0.0.1:#{@control}", "--control-token", "t0ken",
                  rackup: @rackup)
  end

  def control(path)
    Net::HTTP.get(URI("http://127.0.0.1:#{@control}#{path}?token=t0ken"))
  end

  def grow(server, megabytes)
    Integer(Net::HTTP.get(URI(server.url("/?mb=#{megabytes}"))))
  end

  it "replaces a worker past the soft limit with a successor first, and counts it", stress: false do
    server = start("--worker-memory-limit", "100")
    workers = ready_workers(server)
    grown = grow(server, 150)
    index = workers.key(grown)
    expect(server.wait_for_output(/worker #{index} \(pid #{grown}\) uses \d+ MB, past worker_memory_limit 100 MB; replacing it/,
                                  timeout: 20)).to be(true), server.output
    expect(server.wait_for_output(/worker #{index} \(pid #{grown}\) replaced \(worker_memory_limit\)/,
                                  timeout: 30)).to be(true), server.output
    successor = ready_workers(server)[index]
    expect(successor).not_to eq(grown)
    # The successor was ready before the old worker stopped: no gap.
    output = server.output
    expect(output.index("worker #{index} (pid #{successor}) ready")).to be < output.index("(pid #{grown}) replaced")
    expect(ready_workers(server)[1 - index]).to eq(workers[1 - index])

    stats = JSON.parse(control("/stats"))
    expect(stats["butterflies"]["restarts"]["memory"]).to eq(1)
    # Each worker's gauge, once the master measured the successor too.
    metrics = wait_until(message: "both workers measured") do
      text = control("/metrics")
      sizes = text.scan(/^butterflies_worker_memory_bytes\{worker="(\d+)"\} (\d+)$/).to_h
      text if sizes.keys.sort == %w[0 1] && sizes.values.all? { |n| n.to_i.positive? }
    end
    expect(metrics).to match(/^butterflies_worker_restarts_total\{reason="memory"\} 1$/)
  end

  it "kills a worker past the hard limit at once", stress: false do
    server = start("--worker-memory-hard-limit", "100")
    workers = ready_workers(server)
    grown = grow(server, 150)
    index = workers.key(grown)
    expect(server.wait_for_output(/worker #{index} \(pid #{grown}\) killed \(worker_memory_hard_limit\): killed by SIGKILL/,
                                  timeout: 20)).to be(true), server.output
    expect(server.output).to include("past worker_memory_hard_limit 100 MB; killing it")
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 3, timeout: 30)).to be(true), server.output
    expect(ready_workers(server)[index]).not_to eq(grown)
    expect(JSON.parse(control("/stats"))["butterflies"]["restarts"]["memory"]).to eq(1)
  end
end
