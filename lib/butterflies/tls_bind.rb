# frozen_string_literal: true

module Butterflies
  # An ssl:// bind's TLS settings, from Puma's query keys: cert= and key=
  # (paths) or cert_pem= and key_pem= (PEM text), repeatable for more
  # certificates served by SNI name (host= names the one before it; else
  # the names a certificate was issued for choose it); ca=, verify_mode=
  # none|peer|force_peer, ssl_ciphersuites= (colon-separated).
  class TlsBind
    VERIFY_MODES = %w[none peer force_peer].freeze
    # Puma's keys that only mean something to OpenSSL.
    OPENSSL_ONLY = %w[ssl_cipher_filter ssl_cipher_list verification_flags key_password_command
                      keystore keystore_pass truststore truststore_pass cert_chain].freeze
    # Puma's keys that ask for what rustls always does (no TLS below 1.2).
    ALWAYS_SO = %w[no_tlsv1 no_tlsv1_1].freeze
    # Where each goes in a [host, cert, key] entry.
    PARTS = { "cert" => 1, "cert_pem" => 1, "key" => 2, "key_pem" => 2 }.freeze
    KNOWN = %w[cert key cert_pem key_pem host ca verify_mode ssl_ciphersuites].freeze

    # [host or nil, cert, key] each; the first serves clients that name no
    # host, or one no certificate covers. Empty: the development one.
    attr_accessor :certs
    attr_reader :ca, :verify_mode, :ciphersuites

    # The settings the query pairs of `uri` give. Raises ConfigError.
    def self.parse(uri, pairs)
      tls = new(uri)
      pairs.each { |key, value| tls.set(key, value) }
      tls.check!
    end

    def initialize(uri)
      @uri = uri
      @certs = []
      @ca = nil
      @verify_mode = "none"
      @ciphersuites = nil
    end

    def set(key, value)
      return add(PARTS.fetch(key), value) if PARTS.key?(key)

      case key
      when "host" then name_last(value)
      when "ca" then @ca = value
      when "verify_mode" then @verify_mode = verify(value)
      else other(key, value)
      end
    end

    # What Engine.new takes: [certs, ca, verify_mode, ciphersuites].
    def to_engine
      [certs, ca, verify_mode, ciphersuites]
    end

    def dev_cert?
      certs.empty?
    end

    # Every certificate has its key, and every key its certificate.
    def check!
      certs.each do |host, cert, key|
        next if cert && key

        given, missing = cert ? %w[cert key] : %w[key cert]
        fail_with "#{given} #{(cert || key).inspect} needs its #{missing} too#{" (host #{host})" if host}"
      end
      self
    end

    private

    # cert (at 1) or key (at 2) of the current certificate, or of a new one.
    def add(at, value)
      certs << [nil, nil, nil] if certs.empty? || certs.last[at]
      certs.last[at] = value
    end

    def name_last(value)
      fail_with "host= names the certificate before it" if certs.empty?
      certs.last[0] = value.downcase
    end

    def verify(value)
      return value if VERIFY_MODES.include?(value)

      fail_with "verify_mode must be one of #{VERIFY_MODES.join(', ')}"
    end

    def other(key, value)
      return @ciphersuites = value.split(/[:,]/).map(&:strip).reject(&:empty?) if key == "ssl_ciphersuites"
      return if ALWAYS_SO.include?(key)

      if OPENSSL_ONLY.include?(key)
        fail_with "#{key} is an OpenSSL option; Butterflies' TLS is rustls (TLS 1.2 and 1.3 only; " \
                  "choose suites with ssl_ciphersuites=)"
      end

      fail_with "unknown option #{key} (known: proxy_protocol, #{KNOWN.join(', ')})"
    end

    def fail_with(message)
      raise ConfigError, "bind #{@uri.inspect}: #{message}"
    end
  end
end
