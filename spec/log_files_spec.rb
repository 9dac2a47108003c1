# frozen_string_literal: true

require "tmpdir"

# stdout_redirect and reopening the log files (logrotate's way: move the
# file, then ask the server to reopen it), in a cluster, with the access
# log written by every worker's Rust side.
RSpec.describe "log files", timeout: 120 do
  def wait_for_file(path, pattern, count: 1, timeout: 30)
    wait_until(timeout: timeout, message: "#{count} x #{pattern.inspect} in #{path}") do
      File.exist?(path) && File.read(path).scan(pattern).size >= count
    end
  end

  it "writes every process's output to the files, and reopens them without losing a line" do
    Dir.mktmpdir do |dir|
      out = File.join(dir, "out.log")
      err = File.join(dir, "err.log")
      control = "tcp://127.0.0.1:#{TCPServer.open('127.0.0.1', 0) { |s| s.addr[1] }}"
      command = butterflies_command("-w", "2", "-t", "2", "--io-threads", "1", "-b", "tcp://127.0.0.1:0",
                                    "--redirect-stdout", out, "--redirect-stderr", err, "--log-requests",
                                    "--control-url", control, "--control-token", "tok", ServerHelpers::APP)
      pid = Process.spawn(*command, out: File::NULL, err: File::NULL, pgroup: true)
      begin
        wait_for_file(out, ClusterHelpers::WORKER_READY, count: 2)
        port = Integer(File.read(out)[%r{Listening on http://127\.0\.0\.1:(\d+)}, 1])
        access = %r{^127\.0\.0\.1 - - \[.*\] "GET /(?:before|after) HTTP/1\.1" 404 }
        5.times { Net::HTTP.get(URI("http://127.0.0.1:#{port}/before")) }
        wait_for_file(out, access, count: 5)

        File.rename(out, "#{out}.1")
        Process.kill("URG", pid) # what `butterflies ctl reopen-logs` sends without a control server
        wait_until(message: "out.log to be made again") { File.exist?(out) }
        5.times { Net::HTTP.get(URI("http://127.0.0.1:#{port}/after")) }
        wait_for_file(out, access, count: 5)

        File.rename(out, "#{out}.2")
        ctl = [RbConfig.ruby, "-I#{ServerHelpers::ROOT}/lib", File.join(ServerHelpers::ROOT, "exe/butterflies"),
               "ctl", "-C", control, "-T", "tok", "reopen-logs"]
        expect(system(*ctl, out: File::NULL)).to be(true)
        wait_until(message: "out.log to be made again, by ctl") { File.exist?(out) }
        5.times { Net::HTTP.get(URI("http://127.0.0.1:#{port}/after")) }
        wait_for_file(out, access, count: 5)
        lines = [".1", ".2", ""].sum { |suffix| File.read("#{out}#{suffix}").scan(access).size }
        expect(lines).to eq(15)
        expect(File.read("#{out}.1")).to include("Use Ctrl-C to stop")
        expect(File.read(err)).not_to include("cannot reopen")
      ensure
        Process.kill("TERM", -pid)
        Process.wait(pid)
      end
    end
  end
end
