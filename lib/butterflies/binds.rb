# frozen_string_literal: true

module Butterflies
  # Turns the bind URIs users write (`tcp://HOST:PORT`, `HOST:PORT`) into the
  # "host:port" strings the engine binds.
  module Binds
    module_function

    # "tcp://0.0.0.0:9292" => "0.0.0.0:9292"; "tcp://[::1]:80" => "[::1]:80".
    def to_address(uri)
      text = uri.to_s.strip
      raise ConfigError, "bind #{uri.inspect}: only tcp:// is supported yet" if text.match?(%r{\A(?!tcp://)\w+://})

      text = text.delete_prefix("tcp://")
      host, port = split_host_port(text)
      raise ConfigError, "bind #{uri.inspect}: expected tcp://HOST:PORT" if host.empty? || port.nil?
      raise ConfigError, "bind #{uri.inspect}: port must be 0-65535" unless port.match?(/\A\d+\z/) && port.to_i <= 65_535

      "#{host}:#{port.to_i}"
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
