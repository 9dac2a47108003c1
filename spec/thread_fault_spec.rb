# frozen_string_literal: true

# A Rust thread of the engine that ends on an error (or a panic: the same
# path, see src/net/supervise.rs and its unit tests) never leaves the
# process serving on with a thread fewer: it is logged, the process stops
# gracefully and exits non-zero, and a cluster master replaces the worker.
RSpec.describe "a Rust thread that fails", timeout: 60 do
  faulty = File.join(ServerHelpers::ROOT, "spec/fixtures/faulty.ru")

  it "stops a single-mode server gracefully with a non-zero exit status" do
    server = start_butterflies("-t", "2", "--io-threads", "2", rackup: faulty)
    response = Net::HTTP.get_response(URI(server.url("/break_epoll")))
    expect(response.body).to match(/broke [1-9]\d* epoll descriptors/)
    status = server.wait(timeout: 20)
    expect(status).not_to be_nil, "server still running:\n#{server.output}"
    expect(status.exitstatus).to eq(1)
    expect(server.output).to match(/thread butterflies-io-\d failed: epoll_wait: EINVAL/)
    expect(server.output).to include("Stopping (waiting up to")
    expect(server.output).to include("Goodbye")
  end

  it "stops the server the same way when an inline loop fails (--inline-io)", stress: false do
    server = start_butterflies("-t", "2", "--io-threads", "1", "--inline-io", rackup: faulty)
    response = Net::HTTP.get_response(URI(server.url("/break_epoll")))
    expect(response.body).to match(/broke [1-9]\d* epoll descriptors/)
    status = server.wait(timeout: 20)
    expect(status).not_to be_nil, "server still running:\n#{server.output}"
    expect(status.exitstatus).to eq(1)
    expect(server.output).to match(/thread butterflies-io-0 failed: epoll_wait: EINVAL/)
    expect(server.output).to include("Goodbye")
  end

  it "makes a cluster worker exit non-zero, and the master replaces it" do
    server = start_cluster(rackup: faulty, workers: 1)
    first = ready_workers(server).fetch(0)
    body = Net::HTTP.get(URI(server.url("/break_epoll")))
    expect(body).to include("in #{first}")
    expect(server.wait_for_output(/worker 0 \(pid #{first}\) died: exit status 1; respawning/, timeout: 20))
      .to be(true), server.output
    wait_for_ready_workers(server, 2)
    expect(ready_workers(server)[0]).not_to eq(first)
    expect(Net::HTTP.get(URI(server.url("/pid"))).to_i).to eq(ready_workers(server)[0])
  end
end
