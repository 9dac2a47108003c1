# frozen_string_literal: true

require "butterflies"

# Every transition of a WorkerHandle, on a real child process (a `sleep`)
# so TERM and KILL are real signals and exits are real statuses.
RSpec.describe Butterflies::WorkerHandle do
  # A child that says "up" once it runs (and, with `trap_term`, once it
  # ignores TERM), then sleeps.
  def child(trap_term: false)
    script = "#{"trap('TERM') {}; " if trap_term}$stdout.puts 'up'; $stdout.flush; sleep 30"
    reader, writer = IO.pipe
    pid = Process.spawn(RbConfig.ruby, "-e", script, out: writer)
    writer.close
    @pids << pid
    raise "child did not start" unless reader.wait_readable(10) && reader.gets == "up\n"

    pid
  ensure
    reader&.close
  end

  def handle(pid)
    described_class.new(index: 3, pid: pid, slot: 7, phase: 1, channel: nil)
  end

  # Waits (at most 10 s) for `pid` to exit; its status.
  def reaped(pid)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    loop do
      _, status = Process.wait2(pid, Process::WNOHANG)
      return status if status
      raise "pid #{pid} did not exit" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      IO.select(nil, nil, nil, 0.02)
    end
  end

  before { @pids = [] }

  after do
    @pids.each do |pid|
      Process.kill("KILL", pid)
      Process.wait(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
  end

  it "boots, becomes ready on its first ready or stuck beat, and replacing on a stuck one" do
    worker = handle(child)
    expect([worker.state, worker.ready?, worker.active?]).to eq([:booting, false, true])
    expect(worker.observe(:booting)).to be_nil
    expect(worker.observe(:ready)).to eq(:ready)
    expect(worker.observe(:ready)).to be_nil
    expect(worker.observe(:stuck)).to eq(:stuck)
    expect([worker.state, worker.ready?, worker.replacing?]).to eq([:replacing, true, true])
    expect(worker.observe(:stuck)).to be_nil
  end

  it "is marked for a phased restart only once ready" do
    worker = handle(child)
    worker.replace!
    expect(worker.state).to eq(:booting)
    worker.observe(:ready)
    worker.replace!
    expect(worker.state).to eq(:replacing)
  end

  it "sends TERM once, keeps the first reason, and logs nothing more for an exit it asked for" do
    pid = child
    worker = handle(pid)
    expect(worker.stop(:phased, 100.0)).to be(true)
    expect(worker.stop(:timeout, 101.0)).to be(false)
    expect([worker.state, worker.reason, worker.stopped_at]).to eq([:stopping, :phased, 100.0])
    expect(worker.observe(:ready)).to be_nil
    status = reaped(pid)
    expect(status.termsig).to eq(Signal.list.fetch("TERM"))
    expect(worker.crashed?).to be(false)
    expect(worker.respawn_now?).to be(false)
    expect(worker.exit_line(status)).to be_nil
  end

  it "kills a worker that outlives its grace, once, and counts a timeout as a timeout" do
    pid = child(trap_term: true)
    worker = handle(pid)
    worker.observe(:ready)
    worker.stop(:timeout, 100.0)
    expect(worker.escalate(104.0, 5)).to be_nil
    expect(worker.escalate(106.0, 5)).to eq(1)
    expect(worker.escalate(107.0, 5)).to be_nil
    status = reaped(pid)
    expect(status.termsig).to eq(Signal.list.fetch("KILL"))
    expect(worker.respawn_now?).to be(true)
    expect(worker.crashed?).to be(false)
    expect(worker.exit_line(status)).to eq("* worker 3 (pid #{pid}) replaced after no heartbeat: killed by SIGKILL; respawning")
  end

  it "reports an exit nobody asked for as a crash, to be respawned" do
    pid = child
    worker = handle(pid)
    Process.kill("KILL", pid)
    status = reaped(pid)
    expect(worker.crashed?).to be(true)
    expect(worker.exit_line(status)).to eq("* worker 3 (pid #{pid}) died: killed by SIGKILL; respawning")
  end
end
