# frozen_string_literal: true

require "optparse"
require "butterflies"
require "butterflies/app_loader"

module Butterflies
  # `butterflies [options] [rackup file]`. Flag names follow Puma's where
  # they overlap. Every user mistake ends as one line on stderr and a
  # non-zero exit status, never a backtrace.
  class CLI
    USAGE_ERROR = 2
    FAILURE = 1

    def initialize(argv, stdout: $stdout, stderr: $stderr)
      @argv = argv.dup
      @stdout = stdout
      @stderr = stderr
      @options = { binds: [], host: nil, port: nil }
    end

    # Returns the exit status.
    def run
      parse!
      rackup = @argv.shift || "config.ru"
      raise ConfigError, "unexpected arguments: #{@argv.join(' ')}" unless @argv.empty?

      ENV["RACK_ENV"] ||= @options[:environment] || "development"
      app = AppLoader.load(rackup)
      server = Server.new(app, server_options)
      server.run
      0
    rescue OptionParser::ParseError, ConfigError => e
      fail_with("#{e.message} (see butterflies --help)", USAGE_ERROR)
    rescue AppLoadError, BindError => e
      fail_with(e.message, FAILURE)
    end

    private

    def fail_with(message, status)
      @stderr.puts("butterflies: #{message}")
      status
    end

    def server_options
      binds = @options[:binds]
      if binds.empty? || @options[:host] || @options[:port]
        binds += ["tcp://#{@options[:host] || '0.0.0.0'}:#{@options[:port] || 9292}"]
      end
      @options.except(:binds, :host, :port, :environment).merge(binds: binds, log: @stdout)
    end

    def parse!
      parser.parse!(@argv)
    end

    def parser # rubocop:disable Metrics/MethodLength, Metrics/AbcSize
      OptionParser.new do |o|
        o.banner = "Usage: butterflies [options] [rackup file (default: config.ru)]"
        o.on("-b", "--bind URI", "Listen on URI, e.g. tcp://127.0.0.1:9292 (repeatable)") do |uri|
          @options[:binds] << uri
        end
        o.on("-p", "--port PORT", Integer, "Listen on PORT (default 9292)") { |p| @options[:port] = p }
        o.on("-o", "--host HOST", "Listen on HOST (default 0.0.0.0)") { |h| @options[:host] = h }
        o.on("-t", "--threads N", "App threads: N, or MIN:MAX as in Puma (MAX is used)") do |t|
          @options[:threads] = positive("--threads", t.split(":").last)
        end
        o.on("--io-threads N", "Rust IO threads (default: number of CPUs)") do |n|
          @options[:io_threads] = positive("--io-threads", n)
        end
        o.on("--shutdown-timeout SECONDS", Float, "Time in-flight requests get on stop (default 30)") do |s|
          @options[:shutdown_timeout] = s
        end
        {
          "--idle-timeout" => [:idle_timeout, "Close keep-alive connections idle this long (default 20)"],
          "--header-timeout" => [:header_timeout, "408 when a request head takes longer (default 20)"],
          "--body-timeout" => [:body_timeout, "408 when a body pauses longer (default 30)"],
          "--write-timeout" => [:write_timeout, "Drop clients that read nothing this long (default 30)"]
        }.each do |flag, (key, text)|
          o.on("#{flag} SECONDS", Float, text) { |s| @options[key] = non_negative(flag, s) }
        end
        o.on("--max-body-bytes N", Integer, "413 for larger request bodies (default 1 GiB)") do |n|
          @options[:max_body_bytes] = positive("--max-body-bytes", n.to_s)
        end
        o.on("-e", "--environment ENV", "RACK_ENV (default: development)") { |e| @options[:environment] = e }
        o.on("-q", "--quiet", "No boot banner") { @options[:quiet] = true }
        o.on("-v", "--version", "Print the version and exit") do
          @stdout.puts("butterflies #{VERSION}")
          throw :exit_status, 0
        end
        o.on("-h", "--help", "Show this help and exit") do
          @stdout.puts(o)
          throw :exit_status, 0
        end
      end
    end

    def non_negative(flag, seconds)
      raise ConfigError, "#{flag} must not be negative, got #{seconds}" if seconds.negative?

      seconds
    end

    def positive(flag, text)
      Integer(text, 10).tap { |n| raise ConfigError, "#{flag} must be at least 1, got #{n}" if n < 1 }
    rescue ArgumentError, TypeError
      raise ConfigError, "#{flag} needs a whole number, got #{text.inspect}"
    end

    public

    # Runs and returns the exit status, handling --help and --version.
    def self.start(argv)
      catch(:exit_status) { new(argv).run }
    end
  end
end
