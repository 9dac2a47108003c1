# frozen_string_literal: true

module Butterflies
  # The self-signed certificate an ssl:// bind without cert= and key= uses
  # in development, as Puma does with the localhost gem: made once (an
  # ECDSA P-256 key, valid for localhost, 127.0.0.1 and ::1 for a year),
  # kept in ~/.butterflies (or BUTTERFLIES_DEV_CERT_DIR), remade when it
  # expires. Clients trust it with `curl --cacert PATH`.
  module DevCert
    DIR_ENV = "BUTTERFLIES_DEV_CERT_DIR"
    NAMES = ["DNS:localhost", "IP:127.0.0.1", "IP:0:0:0:0:0:0:0:1"].freeze

    module_function

    # [cert path, key path], made if missing or expired.
    def ensure!
      require "openssl"
      cert_path, key_path = paths
      return [cert_path, key_path] if usable?(cert_path, key_path)

      FileUtils.mkdir_p(File.dirname(cert_path), mode: 0o700)
      key = OpenSSL::PKey::EC.generate("prime256v1")
      File.open(key_path, File::WRONLY | File::CREAT | File::TRUNC, 0o600) { |f| f.write(key.to_pem) }
      File.write(cert_path, certificate(key).to_pem)
      [cert_path, key_path]
    rescue SystemCallError, OpenSSL::OpenSSLError => e
      raise ConfigError, "ssl:// without cert=: cannot make a development certificate in " \
                         "#{File.dirname(cert_path || dir)}: #{e.message}"
    end

    def dir
      ENV.fetch(DIR_ENV) { File.join(Dir.home, ".butterflies") }
    rescue ArgumentError # no home directory
      raise ConfigError, "ssl:// without cert=: no home directory for a development certificate; " \
                         "set #{DIR_ENV} or give cert= and key="
    end

    def paths
      [File.join(dir, "localhost.crt"), File.join(dir, "localhost.key")]
    end

    def usable?(cert_path, key_path)
      return false unless File.file?(cert_path) && File.file?(key_path)

      OpenSSL::X509::Certificate.new(File.read(cert_path)).not_after > Time.now + 86_400
    rescue OpenSSL::OpenSSLError
      false
    end

    def certificate(key)
      cert = OpenSSL::X509::Certificate.new
      cert.version = 2
      cert.serial = OpenSSL::BN.rand(64)
      cert.subject = cert.issuer = OpenSSL::X509::Name.parse("/CN=localhost/O=Butterflies development")
      cert.public_key = key
      cert.not_before = Time.now - 60
      cert.not_after = Time.now + (365 * 86_400)
      extensions = OpenSSL::X509::ExtensionFactory.new(cert, cert)
      cert.add_extension(extensions.create_extension("subjectAltName", NAMES.join(","), false))
      cert.add_extension(extensions.create_extension("basicConstraints", "CA:FALSE", true))
      cert.add_extension(extensions.create_extension("extendedKeyUsage", "serverAuth", false))
      cert.sign(key, OpenSSL::Digest.new("SHA256"))
      cert
    end
  end
end
