# frozen_string_literal: true

require "optparse"
require "butterflies"
require "butterflies/app_loader"

module Butterflies
  # `butterflies [options] [rackup file]`. Flag names follow Puma's where
  # they overlap. Settings come from defaults, then the config file
  # (config/butterflies.rb or -C), then these flags. Every user mistake ends
  # as one line on stderr and a non-zero exit status, never a backtrace.
  # Each flag sets its value through the config file's directive (DSL), so
  # both check a value the same way; errors name the flag.
  class CLI
    def initialize(argv, stdout: $stdout, stderr: $stderr)
      @argv = argv.dup
      @stdout = stdout
      @stderr = stderr
      @flags = Configuration.new
      @dsl = DSL.new(@flags, "(command line)", label: ->(name) { FLAGS.fetch(name, "--#{name.to_s.tr('_', '-')}") })
      @host = nil
      @port = nil
    end

    # Flags whose name is not the directive's.
    FLAGS = { max_threads: "--threads", preload_app: "--preload" }.freeze

    # Returns the exit status.
    def run
      config = Configuration.load(parse_arguments, path: @config_path)
      return dry_run(config) if @dry_run

      ENV["RACK_ENV"] = config[:environment] || ENV["RACK_ENV"] || "development"
      serve(config)
      0
    rescue OptionParser::ParseError => e
      fail_with("#{e.message} (see butterflies --help)", EXIT_USAGE)
    rescue ConfigError => e
      fail_with(e.message, EXIT_USAGE)
    rescue AppLoadError, BindError, EngineFault => e
      fail_with(e.message, EXIT_FAILURE)
    end

    # Runs and returns the exit status, handling --help and --version;
    # `butterflies ctl ...` is the control client (Butterflies::Ctl).
    def self.start(argv)
      if argv.first == "ctl"
        require "butterflies/ctl"
        return catch(:exit_status) { Ctl.new(argv.drop(1)).run }
      end
      catch(:exit_status) { new(argv).run }
    end

    private

    # The flags and the rackup file, as configuration values.
    def parse_arguments
      parser.parse!(@argv)
      @dsl.rackup(@argv.shift) if @argv.any?
      raise ConfigError, "unexpected arguments: #{@argv.join(' ')}" unless @argv.empty?

      @dsl.bind("tcp://#{@host || '0.0.0.0'}:#{@port || 9292}") if @host || @port
      @flags.given
    end

    def serve(config)
      loader = -> { AppLoader.load(config[:rackup]) }
      if ENV.key?(Cluster::WORKER_ENV)
        Cluster.run_exec_worker(config, loader: loader, log: @stdout)
      elsif config.cluster?
        Cluster.new(config, loader: loader, cli: @flags.given, config_path: @config_path, log: @stdout).run
      else
        Server.new(Systemd.while_loading(&loader), config, log: @stdout).run
      end
    end

    def dry_run(config)
      @stdout.puts(config.dump)
      0
    end

    def fail_with(message, status)
      @stderr.puts("butterflies: #{message}")
      status
    end

    # Options whose flags are written out below (short forms, other
    # arguments); every other option with --help text gets `--its-name`.
    OWN_FLAGS = %i[workers threads tcp_fastopen].freeze

    # A flag for each count and duration of the table of options
    # (Configuration::OPTIONS), set through its directive.
    def option_flags(opts)
      Configuration::OPTIONS.each do |key, option|
        next if OWN_FLAGS.include?(key) || !option[:help]

        flag = "--#{key.to_s.tr('_', '-')}"
        text = "#{option[:help]} (default #{Configuration.default_text(key)})"
        if option[:kind] == :seconds
          opts.on("#{flag} SECONDS", Float, text) { |s| @dsl.public_send(key, s) }
        else
          opts.on("#{flag} N", text) { |n| @dsl.public_send(key, n) }
        end
      end
    end

    def parser
      OptionParser.new do |o|
        o.banner = "Usage: butterflies [options] [rackup file (default: config.ru)]"
        o.on("-C", "--config PATH", "Config file (default: config/butterflies.rb if present)") { |p| @config_path = p }
        where_flags(o)
        process_flags(o)
        option_flags(o)
        info_flags(o)
      end
    end

    # Where to listen.
    def where_flags(opts)
      opts.on("-b", "--bind URI", "Listen on tcp://HOST:PORT, ssl://HOST:PORT?cert=PATH&key=PATH or " \
                                  "unix:///PATH (repeatable; ?proxy_protocol=v1|v2|any: a proxy in front " \
                                  "sends it)") do |uri|
        @dsl.bind(uri)
      end
      opts.on("--proxy-from CIDR[,CIDR]", "Believe PROXY protocol headers from these proxies") { |r| @dsl.proxy_from(r) }
      opts.on("-p", "--port PORT", Integer, "Listen on PORT (default 9292)") { |p| @port = p }
      opts.on("-o", "--host HOST", "Listen on HOST (default 0.0.0.0)") { |h| @host = h }
      opts.on("--tcp-fastopen [QUEUE]", Integer, "Enable TCP_FASTOPEN (queue length, default 256)") do |q|
        @dsl.tcp_fastopen(q || 256)
      end
    end

    # Processes and threads.
    def process_flags(opts)
      opts.on("-w", "--workers N", "Worker processes (default 0: single mode)") do |n|
        @dsl.workers(n)
      end
      opts.on("-t", "--threads N", "App threads: N, or MIN:MAX to grow on demand (default 5:64)") do |t|
        @dsl.threads(*t.split(":", 2))
      end
      opts.on("--preload", "Load the app in the master before forking workers") { @dsl.preload_app! }
      opts.on("--pin-workers", "Pin worker i to CPU i (cluster mode)") { @dsl.pin_workers }
      opts.on("--pidfile PATH", "Write the master's pid to PATH") { |p| @dsl.pidfile(p) }
      opts.on("--redirect-stdout PATH", "Write stdout (every process's) to PATH") { |p| @dsl.redirect_stdout(p) }
      opts.on("--redirect-stderr PATH", "Write stderr (every process's) to PATH") { |p| @dsl.redirect_stderr(p) }
      opts.on("--redirect-append", "Append to the redirected files at boot") { @dsl.redirect_append }
      opts.on("-S", "--state PATH", "Write pid, control URL and token to PATH (for butterflies ctl -S)") do |p|
        @dsl.state_path(p)
      end
    end

    # The environment, output, and the flags that only print.
    def info_flags(opts)
      opts.on("-e", "--environment ENV", "RACK_ENV (default: development)") { |e| @dsl.environment(e) }
      opts.on("-q", "--quiet", "No boot banner") { @dsl.quiet }
      opts.on("--control-url URL", "Serve /stats and /metrics on tcp://HOST:PORT or unix:///PATH") do |u|
        @dsl.control_url(u)
      end
      opts.on("--control-token TOKEN", "The control server's token (required for TCP; ps shows it: prefer " \
                                       "the next two)") { |t| @dsl.control_token(t) }
      opts.on("--control-token-file PATH", "Read the token from PATH (or set BUTTERFLIES_CONTROL_TOKEN)") do |p|
        @dsl.control_token_file(p)
      end
      opts.on("--inline-io", "No IO threads: app threads poll the IO loops themselves") { @dsl.inline_io }
      opts.on("--trust-request-start", "Measure queue time from a proxy's X-Request-Start") { @dsl.trust_request_start }
      opts.on("--log-requests", "An access log line per request on stdout (Apache common format)") do
        @dsl.log_requests(true)
      end
      opts.on("--log-format FORMAT", "The access log's format: common or json (turns it on)") { |f| @dsl.log_requests(f) }
      opts.on("--dry-run", "Print the resolved configuration and exit") { @dry_run = true }
      opts.on("-v", "--version", "Print the version and exit") do
        @stdout.puts("butterflies #{VERSION}")
        throw :exit_status, 0
      end
      opts.on("-h", "--help", "Show this help and exit") do
        @stdout.puts(opts)
        throw :exit_status, 0
      end
    end
  end
end
