# frozen_string_literal: true

require "open3"

RSpec.describe "the config file" do
  def run_cli(*args, chdir:)
    Open3.capture3(*butterflies_command(*args), chdir: chdir, stdin_data: "")
  end

  def in_app(config)
    Dir.mktmpdir do |dir|
      FileUtils.mkdir_p(File.join(dir, "config"))
      File.write(File.join(dir, "config/butterflies.rb"), config)
      FileUtils.cp(File.join(ServerHelpers::ROOT, "examples/hello/config.ru"), dir)
      yield dir
    end
  end

  it "is read from config/butterflies.rb, and the command line wins" do
    in_app("workers 3\nthreads 1, 7\nbind 'tcp://127.0.0.1:4000'\npreload_app!\nrequest_timeout 12\n") do |dir|
      out, _err, status = run_cli("--dry-run", "-w", "2", chdir: dir)
      expect(status.exitstatus).to eq(0)
      expect(out).to include("workers: 2\n", "threads: 7\n", 'binds: ["tcp://127.0.0.1:4000"]', "preload_app: true\n",
                             "request_timeout: 12.0\n", "config file: config/butterflies.rb")
      expect(out).to include("idle_spin: 50\n")
    end
  end

  {
    "wokers 2\n" => "config/butterflies.rb:1: unknown option wokers",
    "workers 2\n\nthreads 'many'\n" =>
      "config/butterflies.rb:3: threads must be a whole number from 0 to 4611686018427387904, got \"many\"",
    "workers 1\nidle_timeout Float::INFINITY\n" =>
      "config/butterflies.rb:2: idle_timeout must be a number of seconds above 0 and at most 86400, got Infinity",
    "write_timeout 0\n" => "config/butterflies.rb:1: write_timeout must be a number of seconds above 0 and at most 86400, got 0",
    "max_head_bytes 0\n" => "config/butterflies.rb:1: max_head_bytes must be a whole number from 1 to 4611686018427387904, got 0",
    "bind 'http://x'\n" => "config/butterflies.rb:1: bind \"http://x\": use tcp://HOST:PORT, ssl://HOST:PORT or unix:///path",
    "workers(\n" => "config/butterflies.rb:1: syntax error, unexpected end-of-input"
  }.each do |config, message|
    it "reports #{config.lines.last.strip} with the file and line and exits non-zero" do
      in_app(config) do |dir|
        _out, err, status = run_cli(chdir: dir)
        expect(status.exitstatus).to eq(2)
        expect(err.lines.size).to eq(1)
        expect(err).to start_with("butterflies: #{message}")
      end
    end
  end

  it "says when -C names a file that is not there" do
    _out, err, status = run_cli("-C", "nope.rb", chdir: ServerHelpers::ROOT)
    expect(status.exitstatus).to eq(2)
    expect(err).to eq("butterflies: no config file nope.rb\n")
  end

  # Ruby-side lifecycle only (hooks, preload, HUP): out of the GC.stress
  # pass, where it took 15 s of CI's 30 minutes.
  it "runs hooks, preloads once in the master, and reloads on HUP", timeout: 120, stress: false do
    in_app(<<~'RUBY') do |dir|
      workers 2
      threads 2
      io_threads 1
      preload_app!
      before_fork { File.write("before_fork.#{Process.pid}", "") }
      on_worker_boot { |i| File.write("boot.#{i}.#{Process.pid}", "") }
      on_worker_shutdown { |i| File.write("shutdown.#{i}.#{Process.pid}", "") }
    RUBY
      File.write(File.join(dir, "config.ru"), <<~RU)
        File.open("loaded", "a") { |f| f.puts Process.pid }
        run ->(env) { [200, {}, [Process.pid.to_s]] }
      RU
      server = ServerProcess.start(butterflies_command("-b", "tcp://127.0.0.1:0"), chdir: dir)
      (@servers ||= []) << server
      wait_for_ready_workers(server, 2)
      workers = ready_workers(server).values
      expect(File.read(File.join(dir, "loaded")).split.map(&:to_i)).to eq([server.pid])
      expect(Dir.children(dir).grep(/\Aboot\./).sort).to eq(["boot.0.#{ready_workers(server)[0]}",
                                                             "boot.1.#{ready_workers(server)[1]}"])
      expect(Dir.children(dir).grep(/\Abefore_fork\./)).to eq(["before_fork.#{server.pid}"])

      File.write(File.join(dir, "config/butterflies.rb"),
                 File.read(File.join(dir, "config/butterflies.rb")).sub("workers 2", "workers 3"))
      server.signal("HUP")
      expect(server.wait_for_output(%r{Reloaded config/butterflies.rb})).to be(true)
      expect(server.wait_for_output(/worker 2 \(pid \d+\) ready/, timeout: 30)).to be(true)
      wait_until(timeout: 30, message: "old workers to be replaced") { workers.none? { |pid| alive?(pid) } }
      expect(Dir.children(dir).grep(/\Ashutdown\./).size).to be >= 2

      # Fewer workers: the extra ones stop, the one left is replaced.
      expect(server.wait_for_matches(/\* worker 1 \(pid \d+\) ready/, 2)).to be(true) # its replacement too
      three = ready_workers(server)
      zero_ready = /\* worker 0 \(pid \d+\) ready/
      File.write(File.join(dir, "config/butterflies.rb"),
                 File.read(File.join(dir, "config/butterflies.rb")).sub("workers 3", "workers 1"))
      server.signal("HUP")
      expect(server.wait_for_matches(zero_ready, server.output.scan(zero_ready).size + 1, timeout: 30)).to be(true)
      wait_until(timeout: 30, message: "the three workers to stop") { three.values.none? { |pid| alive?(pid) } }
      extra_ready = server.output.scan(/\* worker [12] \(pid \d+\) ready/).size
      server.signal("TERM")
      expect(server.wait(timeout: 30)&.exitstatus).to eq(0)
      expect(server.output.scan(/\* worker [12] \(pid \d+\) ready/).size).to eq(extra_ready) # none came back
    end
  end
end
