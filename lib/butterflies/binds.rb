# frozen_string_literal: true

module Butterflies
  # The bind URIs users write (`tcp://HOST:PORT`, `HOST:PORT`,
  # `unix:///path/to.sock`), parsed once, here: the engine gets them as
  # [kind, host or path, port] and parses nothing.
  module Binds
    # A parsed bind: kind :tcp (host without brackets, port) or :unix (an
    # absolute path).
    Bind = Struct.new(:kind, :host, :port, :path, keyword_init: true) do
      # What Engine.new takes: ["tcp", host, port] or ["unix", path, 0].
      def to_engine
        kind == :unix ? ["unix", path, 0] : ["tcp", host, port]
      end

      def unix?
        kind == :unix
      end
    end

    module_function

    # "tcp://0.0.0.0:9292" => tcp 0.0.0.0 9292; "tcp://[::1]:80" => tcp ::1 80;
    # "unix:///run/app.sock" => unix /run/app.sock. Raises ConfigError.
    def parse(uri)
      text = uri.to_s.strip
      return parse_unix(uri, text.delete_prefix("unix://")) if text.start_with?("unix://")
      raise ConfigError, "bind #{uri.inspect}: use tcp://HOST:PORT or unix:///path" if text.match?(%r{\A(?!tcp://)\w+://})

      host, port = split_host_port(text.delete_prefix("tcp://"))
      raise ConfigError, "bind #{uri.inspect}: expected tcp://HOST:PORT" if host.empty? || port.nil?
      raise ConfigError, "bind #{uri.inspect}: port must be 0-65535" unless port.match?(/\A\d+\z/) && port.to_i <= 65_535

      Bind.new(kind: :tcp, host: host.delete_prefix("[").delete_suffix("]"), port: port.to_i)
    end

    def parse_unix(uri, path)
      raise ConfigError, "bind #{uri.inspect}: expected unix:///absolute/path" if path.empty?

      Bind.new(kind: :unix, path: File.expand_path(path))
    end

    # Bind URIs for a host and port given to the Rack handler (rackup's
    # -o/-p, rails server's -b/-p). "localhost" is both loopbacks, where
    # this host has them, as Puma does (with port 0 the engine gives both
    # the first one's port).
    def for_host(host, port)
      host = host.to_s
      return ["tcp://127.0.0.1:#{port}", *(["tcp://[::1]:#{port}"] if ipv6_loopback?)] if host == "localhost"

      host = "[#{host}]" if host.include?(":") && !host.start_with?("[")
      ["tcp://#{host}:#{port}"]
    end

    def ipv6_loopback?
      Socket.ip_address_list.any?(&:ipv6_loopback?)
    end

    # How an engine address is shown: "http://host:port" or "unix:///path".
    def to_url(address)
      address.start_with?("unix:") ? "unix://#{address.delete_prefix('unix:')}" : "http://#{address}"
    end

    def split_host_port(text)
      if text.start_with?("[")
        close = text.index("]") or return ["", nil]
        [text[0..close], text[(close + 2)..]]
      else
        host, _, port = text.rpartition(":")
        host.empty? ? [text, nil] : [host, port]
      end
    end
  end
end
