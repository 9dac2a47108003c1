# frozen_string_literal: true

module Butterflies
  # Turns the bind URIs users write (`tcp://HOST:PORT`, `HOST:PORT`,
  # `unix:///path/to.sock`) into the strings the engine binds ("host:port",
  # "unix:/path").
  module Binds
    module_function

    # "tcp://0.0.0.0:9292" => "0.0.0.0:9292"; "tcp://[::1]:80" => "[::1]:80".
    def to_address(uri)
      text = uri.to_s.strip
      if text.start_with?("unix://")
        path = text.delete_prefix("unix://")
        raise ConfigError, "bind #{uri.inspect}: expected unix:///absolute/path" if path.empty?

        return "unix:#{File.expand_path(path)}"
      end
      raise ConfigError, "bind #{uri.inspect}: use tcp://HOST:PORT or unix:///path" if text.match?(%r{\A(?!tcp://)\w+://})

      text = text.delete_prefix("tcp://")
      host, port = split_host_port(text)
      raise ConfigError, "bind #{uri.inspect}: expected tcp://HOST:PORT" if host.empty? || port.nil?
      raise ConfigError, "bind #{uri.inspect}: port must be 0-65535" unless port.match?(/\A\d+\z/) && port.to_i <= 65_535

      "#{host}:#{port.to_i}"
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
