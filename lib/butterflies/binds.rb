# frozen_string_literal: true

require "uri"

module Butterflies
  # The bind URIs users write (`tcp://HOST:PORT`, `HOST:PORT`,
  # `unix:///path/to.sock`, each with `?proxy_protocol=v1|v2|any` if a
  # proxy in front sends the PROXY protocol; `ssl://HOST:PORT?cert=..&key=..`
  # for TLS), parsed once, here: the engine gets them as [kind, host or
  # path, port, proxy protocol, tls] and parses nothing.
  module Binds
    PROXY_PROTOCOLS = %w[v1 v2 any].freeze

    # A parsed bind: kind :tcp (host without brackets, port) or :unix (an
    # absolute path); proxy_protocol "v1", "v2", "any" or nil; tls a
    # TlsBind (an ssl:// bind) or nil.
    Bind = Struct.new(:kind, :host, :port, :path, :proxy_protocol, :tls, keyword_init: true) do
      # What Engine.new takes: ["tcp", host, port, proxy_protocol, tls] or
      # ["unix", path, 0, proxy_protocol, tls].
      def to_engine
        tls_part = tls&.to_engine
        kind == :unix ? ["unix", path, 0, proxy_protocol, tls_part] : ["tcp", host, port, proxy_protocol, tls_part]
      end

      def unix?
        kind == :unix
      end
    end

    module_function

    # "tcp://0.0.0.0:9292" => tcp 0.0.0.0 9292; "tcp://[::1]:80" => tcp ::1 80;
    # "unix:///run/app.sock" => unix /run/app.sock;
    # "ssl://0.0.0.0:443?cert=a.pem&key=a.key" => tcp with TLS. Raises
    # ConfigError.
    def parse(uri)
      text, query = uri.to_s.strip.split("?", 2)
      ssl = text.start_with?("ssl://")
      bind = parse_address(uri, ssl ? "tcp://#{text.delete_prefix('ssl://')}" : text)
      pairs = parse_pairs(query)
      bind.proxy_protocol = proxy_protocol(uri, pairs.select { |k, _| k == "proxy_protocol" })
      tls_pairs = pairs.reject { |k, _| k == "proxy_protocol" }
      if ssl
        bind.tls = TlsBind.parse(uri, tls_pairs)
      elsif tls_pairs.any?
        raise ConfigError, "bind #{uri.inspect}: unknown option #{tls_pairs.first[0]} (known: proxy_protocol; " \
                           "TLS options need ssl://)"
      end
      bind
    end

    # "a=1&b=2&a=3" => [["a", "1"], ["b", "2"], ["a", "3"]], decoded, in order.
    def parse_pairs(query)
      return [] if query.nil? || query.empty?

      URI.decode_www_form(query)
    rescue ArgumentError => e
      raise ConfigError, "bind query #{query.inspect}: #{e.message}"
    end

    def proxy_protocol(uri, pairs)
      return nil if pairs.empty?

      value = pairs.last[1]
      return value if PROXY_PROTOCOLS.include?(value)

      raise ConfigError, "bind #{uri.inspect}: proxy_protocol must be one of #{PROXY_PROTOCOLS.join(', ')}"
    end

    def parse_address(uri, text)
      return parse_unix(uri, text.delete_prefix("unix://")) if text.start_with?("unix://")
      if text.match?(%r{\A(?!tcp://)\w+://})
        raise ConfigError, "bind #{uri.inspect}: use tcp://HOST:PORT, ssl://HOST:PORT or unix:///path"
      end

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

    # How an engine address is shown: "http://host:port", "https://host:port"
    # (tls) or "unix:///path".
    def to_url(address, tls: false)
      return "unix://#{address.delete_prefix('unix:')}#{' (TLS)' if tls}" if address.start_with?("unix:")

      "#{tls ? 'https' : 'http'}://#{address}"
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
