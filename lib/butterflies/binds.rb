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
    VERIFY_MODES = %w[none peer force_peer].freeze
    # Puma's ssl:// query keys that only mean something to OpenSSL.
    OPENSSL_ONLY = %w[ssl_cipher_filter ssl_cipher_list verification_flags key_password_command
                      keystore keystore_pass truststore truststore_pass cert_chain].freeze
    # Puma's keys that ask for what rustls always does (no TLS below 1.2).
    ALWAYS_SO = %w[no_tlsv1 no_tlsv1_1].freeze

    # A TLS bind's settings: certs is a list of [host or nil, cert, key]
    # (each a path, or PEM text); the first serves clients that name no
    # host or one no certificate covers.
    Tls = Struct.new(:certs, :ca, :verify_mode, :ciphersuites, keyword_init: true) do
      def to_engine
        [certs, ca, verify_mode, ciphersuites]
      end

      def dev_cert?
        certs.empty?
      end
    end

    # A parsed bind: kind :tcp (host without brackets, port) or :unix (an
    # absolute path); proxy_protocol "v1", "v2", "any" or nil; tls a Tls
    # (an ssl:// bind) or nil.
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
        bind.tls = parse_tls(uri, tls_pairs)
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

    TLS_KEYS = %w[cert key cert_pem key_pem host ca verify_mode ssl_ciphersuites].freeze

    # The TLS options, Puma's names: cert= and key= (paths) or cert_pem=
    # and key_pem= (PEM text), repeatable for more certificates served by
    # SNI name (host= names the one before it); ca=, verify_mode=,
    # ssl_ciphersuites= (colon-separated).
    def parse_tls(uri, pairs)
      tls = Tls.new(certs: [], ca: nil, verify_mode: "none", ciphersuites: nil)
      pairs.each do |key, value|
        tls_option(uri, tls, key, value)
      end
      tls.certs.each do |host, cert, key|
        next if cert && key

        raise ConfigError, "bind #{uri.inspect}: #{cert ? 'cert' : 'key'} #{(cert || key).inspect} " \
                           "needs its #{cert ? 'key' : 'cert'} too#{" (host #{host})" if host}"
      end
      tls
    end

    def tls_option(uri, tls, key, value)
      case key
      when "cert", "cert_pem" then tls.certs << [nil, value, nil] if tls.certs.empty? || tls.certs.last[1]
                                   tls.certs.last[1] ||= value
      when "key", "key_pem" then tls.certs << [nil, nil, value] if tls.certs.empty? || tls.certs.last[2]
                                 tls.certs.last[2] ||= value
      when "host"
        raise ConfigError, "bind #{uri.inspect}: host= names the certificate before it" if tls.certs.empty?

        tls.certs.last[0] = value.downcase
      when "ca" then tls.ca = value
      when "verify_mode"
        unless VERIFY_MODES.include?(value)
          raise ConfigError, "bind #{uri.inspect}: verify_mode must be one of #{VERIFY_MODES.join(', ')}"
        end

        tls.verify_mode = value
      when "ssl_ciphersuites" then tls.ciphersuites = value.split(/[:,]/).map(&:strip).reject(&:empty?)
      when *ALWAYS_SO then nil
      when *OPENSSL_ONLY
        raise ConfigError, "bind #{uri.inspect}: #{key} is an OpenSSL option; Butterflies' TLS is rustls " \
                           "(TLS 1.2 and 1.3 only; choose suites with ssl_ciphersuites=)"
      else
        raise ConfigError, "bind #{uri.inspect}: unknown option #{key} (known: proxy_protocol, " \
                           "#{TLS_KEYS.join(', ')})"
      end
    end

    def parse_address(uri, text)
      return parse_unix(uri, text.delete_prefix("unix://")) if text.start_with?("unix://")
      raise ConfigError, "bind #{uri.inspect}: use tcp://HOST:PORT, ssl://HOST:PORT or unix:///path" if text.match?(%r{\A(?!tcp://)\w+://})

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
