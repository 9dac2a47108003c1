# frozen_string_literal: true

require "open3"
require "openssl"
require "socket"

# TLS binds (ssl://), with real clients: curl, Ruby's Net::HTTP and
# OpenSSL sockets, `openssl s_client`. The certificates are made by the
# openssl program for each run: a CA, servers a.test and b.test, a client.
RSpec.describe "TLS binds", timeout: 120 do
  include ClusterHelpers

  before(:context) do
    @certs = Dir.mktmpdir("butterflies-tls")
    make_certificates(@certs)
  end

  after(:context) { FileUtils.rm_rf(@certs) }

  def make_certificates(dir)
    openssl = lambda do |*args|
      _out, err, status = Open3.capture3("openssl", *args, chdir: dir)
      raise "openssl #{args.first}: #{err}" unless status.success?
    end
    ec = %w[-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes]
    openssl.call("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Spec CA")
    %w[a b c].each do |name|
      openssl.call("req", *ec, "-keyout", "#{name}.key", "-out", "#{name}.csr", "-subj", "/CN=#{name}.test")
      File.write(File.join(dir, "#{name}.ext"), "subjectAltName=DNS:#{name}.test\nbasicConstraints=CA:FALSE\n")
      openssl.call("x509", "-req", "-in", "#{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                   "-out", "#{name}.pem", "-days", "2", "-extfile", "#{name}.ext")
    end
    openssl.call("req", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/C=GB/O=Example, Inc./CN=alice")
    File.write(File.join(dir, "client.ext"), "extendedKeyUsage=clientAuth\n")
    openssl.call("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "client.pem", "-days", "2", "-extfile", "client.ext")
  end

  def cert(name) = File.join(@certs, name)

  def serial_of(pem_path)
    OpenSSL::X509::Certificate.new(File.read(pem_path)).serial
  end

  # Starts Butterflies on an ssl:// bind of port 0 with `query` (a.test's
  # certificate unless given), and the spec's app.
  def start_tls(query = nil, *args, workers: nil, **kwargs)
    query ||= "cert=#{cert('a.pem')}&key=#{cert('a.key')}"
    command = butterflies_command("-b", "ssl://127.0.0.1:0?#{query}", *(workers ? ["-w", workers.to_s] : []),
                                  *args, rackup)
    server = ServerProcess.start(command, **kwargs)
    (@servers ||= []) << server
    wait_for_ready_workers(server, workers) if workers
    server
  end

  let(:rackup) do
    path = File.join(@certs, "app.ru")
    File.write(path, <<~RUBY)
      require "json"
      big = File.join(#{@certs.inspect}, "big.bin")
      File.binwrite(big, Random.new(7).bytes(3 * 1024 * 1024)) unless File.exist?(big)
      FileBody = Struct.new(:path) do
        def to_path = path
        def each = File.open(path, "rb") { |f| while (c = f.read(65_536)) do yield c end }
      end
      run lambda { |env|
        case env["PATH_INFO"]
        when "/env"
          keys = %w[rack.url_scheme HTTPS SERVER_PORT SSL_CLIENT_VERIFY SSL_CLIENT_S_DN SSL_SERVER_NAME rack.hijack?]
          [200, { "content-type" => "application/json" },
           [JSON.generate(env.slice(*keys).merge("pid" => Process.pid, "cert" => !env["SSL_CLIENT_CERT"].nil?))]]
        when "/big" then [200, { "content-type" => "text/plain" }, ["x" * 1_048_576]]
        when "/huge" then [200, { "content-type" => "text/plain" }, [Random.new(5).bytes(8 << 20)]]
        when "/file" then [200, { "content-length" => File.size(big).to_s }, FileBody.new(big)]
        when "/stream" then [200, {}, Enumerator.new { |y| 3.times { |i| y << "piece \#{i}\\n" } }]
        when "/echo" then [200, {}, [env["rack.input"].read]]
        when "/hijack" then env["rack.hijack"].call
        when "/hints"
          env["rack.early_hints"].call("link" => "</a.css>; rel=preload")
          [200, { "content-type" => "text/plain" }, ["hinted\\n"]]
        else [200, { "content-type" => "text/plain" }, ["hello \#{env['PATH_INFO']}\\n"]]
        end
      }
    RUBY
    path
  end

  # An OpenSSL client connection to `server`, verified against the spec CA.
  def tls_socket(server, host: "a.test", version: nil, session: nil, client_cert: false)
    ctx = OpenSSL::SSL::SSLContext.new
    ctx.ca_file = cert("ca.pem")
    ctx.verify_mode = OpenSSL::SSL::VERIFY_PEER
    ctx.min_version = ctx.max_version = version if version
    ctx.session_cache_mode = OpenSSL::SSL::SSLContext::SESSION_CACHE_CLIENT
    ctx.session_new_cb = ->(args) { @last_session = args[1] }
    if client_cert
      ctx.cert = OpenSSL::X509::Certificate.new(File.read(cert("client.pem")))
      ctx.key = OpenSSL::PKey.read(File.read(cert("client.key")))
    end
    socket = OpenSSL::SSL::SSLSocket.new(TCPSocket.new("127.0.0.1", server.port), ctx)
    socket.hostname = host
    socket.session = session if session
    socket.sync_close = true
    socket.connect
    socket
  end

  # One request on a fresh connection; the response.
  def tls_get(server, path, **options)
    socket = tls_socket(server, **options)
    socket.write("GET #{path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    socket.read
  ensure
    socket&.close
  end

  def curl(server, *args)
    Open3.capture3("curl", "-sS", "--max-time", "20", "--cacert", cert("ca.pem"),
                   "--resolve", "a.test:#{server.port}:127.0.0.1", "--resolve", "b.test:#{server.port}:127.0.0.1",
                   *args)
  end

  def s_client(server, *args, input: "")
    out, err, _status = Open3.capture3("timeout", "20", "openssl", "s_client", "-connect", "127.0.0.1:#{server.port}",
                                       "-CAfile", cert("ca.pem"), *args, stdin_data: input)
    out + err
  end

  describe "serving" do
    it "keeps connections alive, answers pipelined requests in order, and streams large and file bodies" do
      server = start_tls
      # num_connects: the connections each transfer opened (the second
      # reuses the first's).
      out, err, status = curl(server, "-w", "[%{num_connects}]\n",
                              "https://a.test:#{server.port}/one", "https://a.test:#{server.port}/two")
      expect(status).to be_success, err
      expect(out).to eq("hello /one\n[1]\nhello /two\n[0]\n")

      socket = tls_socket(server)
      socket.write("GET /p1 HTTP/1.1\r\nHost: a\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a\r\n\r\n" \
                   "GET /p3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
      answers = socket.read
      expect(answers.scan(%r{hello (/p\d)}).flatten).to eq(%w[/p1 /p2 /p3])

      big, = curl(server, "https://a.test:#{server.port}/big")
      expect(big.bytesize).to eq(1_048_576)
      file, = curl(server, "https://a.test:#{server.port}/file")
      expect(file.b == File.binread(File.join(@certs, "big.bin"))).to be(true), "the file body arrived intact"
      upload = Random.new(3).bytes(2 * 1024 * 1024)
      File.binwrite(File.join(@certs, "upload.bin"), upload)
      echoed, = curl(server, "--data-binary", "@#{File.join(@certs, 'upload.bin')}", "https://a.test:#{server.port}/echo")
      expect(echoed.b == upload).to be(true), "the upload came back intact"
      streamed, = curl(server, "https://a.test:#{server.port}/stream")
      expect(streamed).to eq("piece 0\npiece 1\npiece 2\n")
    end

    it "takes a large response off the app thread for a client that does not read, to disk, and sends it all", stress: false do
      control = File.join(@certs, "spill-control.sock")
      server = start_tls(nil, "-t", "1", "--max-parked-bytes", "65536", "--control-url", "unix://#{control}")
      stats = lambda do
        answer = UNIXSocket.open(control) do |c|
          c.write("GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
          c.read
        end
        JSON.parse(answer.split("\r\n\r\n", 2).last)
      end
      reader = tls_socket(server)
      reader.write("GET /huge HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
      wait_until(timeout: 30, message: "the body spilled") { stats.call["spilled_bytes"].positive? }
      # The only app thread is free again: it answers another client.
      expect(tls_get(server, "/other")).to include("hello /other")
      response = reader.read
      body = response.split("\r\n\r\n", 2).last
      expect(body.b == Random.new(5).bytes(8 << 20)).to be(true), "the spilled body arrived intact"
    end

    it "sends early hints, and answers a request past a limit with its 4xx, as on plain binds" do
      server = start_tls(nil, "--max-body-bytes", "100")
      hinted = tls_get(server, "/hints")
      expect(hinted).to start_with("HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK")
      expect(hinted).to end_with("hinted\n")
      socket = tls_socket(server)
      socket.write("GET / HTTP/1.1\r\nHost: a\r\nX-Big: #{'a' * 20_000}\r\n\r\n")
      expect(socket.read).to start_with("HTTP/1.1 431 ")
      socket = tls_socket(server)
      socket.write("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
      expect(socket.read).to start_with("HTTP/1.1 413 ")
      expect(tls_get(server, "/after")).to include("hello /after")
    end

    it "tells the app the request came over TLS, through Net::HTTP with the CA file" do
      server = start_tls
      http = Net::HTTP.new("127.0.0.1", server.port)
      http.use_ssl = true
      http.ca_file = cert("ca.pem")
      http.verify_hostname = false # the certificate is a.test's; Net::HTTP connects by IP
      env = JSON.parse(http.start { |h| h.get("/env").body })
      expect(env).to include("rack.url_scheme" => "https", "HTTPS" => "on", "rack.hijack?" => false,
                             "SSL_CLIENT_VERIFY" => "NONE")
      expect(env["SERVER_PORT"]).to eq(server.port.to_s)
    end

    it "is refused by a client that does not trust the certificate", stress: false do
      server = start_tls
      http = Net::HTTP.new("127.0.0.1", server.port)
      http.use_ssl = true
      http.verify_mode = OpenSSL::SSL::VERIFY_PEER
      http.cert_store = OpenSSL::X509::Store.new # trusts nothing
      expect { http.start { |h| h.get("/") } }.to raise_error(OpenSSL::SSL::SSLError, /certificate verify failed/)
    end

    it "refuses rack.hijack on TLS with a 500, and keeps serving" do
      server = start_tls
      response = tls_get(server, "/hijack")
      expect(response).to start_with("HTTP/1.1 500")
      expect(server.wait_for_output(/rack.hijack is not available on a TLS connection/)).to be(true)
      expect(tls_get(server, "/after")).to include("hello /after")
    end
  end

  describe "protocols", stress: false do
    it "speaks TLS 1.2 and 1.3 only" do
      server = start_tls
      expect(s_client(server, "-tls1_3", "-servername", "a.test")).to match(/New, TLSv1.3, Cipher is TLS_/)
      expect(s_client(server, "-tls1_2", "-servername", "a.test")).to match(/New, TLSv1.2, Cipher is ECDHE-ECDSA-/)
      expect(s_client(server, "-tls1_1", "-servername", "a.test")).to match(/alert|no protocols available/)
    end

    it "negotiates http/1.1 by ALPN, and answers an h2-only client without ALPN" do
      server = start_tls
      request = "GET /alpn HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
      both = s_client(server, "-alpn", "h2,http/1.1", "-servername", "a.test", "-ign_eof", input: request)
      expect(both).to include("ALPN protocol: http/1.1")
      expect(both).to include("hello /alpn")
      h2 = s_client(server, "-alpn", "h2", "-servername", "a.test", "-ign_eof", input: request)
      expect(h2).to include("No ALPN negotiated")
      expect(h2).to include("hello /alpn")
    end

    it "serves each SNI name its certificate, and the first to other names" do
      query = "cert=#{cert('a.pem')}&key=#{cert('a.key')}&cert=#{cert('b.pem')}&key=#{cert('b.key')}"
      server = start_tls(query)
      subject = ->(name) { tls_socket(server, host: name).peer_cert.subject.to_s }
      expect(subject.call("a.test")).to eq("/CN=a.test")
      expect(subject.call("b.test")).to eq("/CN=b.test")
      expect(JSON.parse(body_of(tls_get(server, "/env", host: "b.test")))["SSL_SERVER_NAME"]).to eq("b.test")
      out, err, status = curl(server, "https://b.test:#{server.port}/sni")
      expect(status).to be_success, err
      expect(out).to eq("hello /sni\n")
    end

    it "gives a plain HTTP request on a TLS port nginx's 400" do
      server = start_tls
      response = raw_request(server, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
      expect(response).to start_with("HTTP/1.1 400")
      expect(response).to include("The plain HTTP request was sent to HTTPS port")
    end

    it "closes a client that stops mid-handshake once the header timeout passes" do
      server = start_tls(nil, "--header-timeout", "1")
      socket = TCPSocket.new("127.0.0.1", server.port)
      socket.write("\x16\x03\x01\x02\x00\x01".b) # the start of a ClientHello, no more
      expect(socket.wait_readable(GcStressMode.scale(10))).to be_truthy
      expect(socket.read_nonblock(100, exception: false)).to be_nil # closed, no answer
    end
  end

  describe "client certificates", stress: false do
    it "requires one with verify_mode=force_peer and tells the app its subject" do
      server = start_tls("cert=#{cert('a.pem')}&key=#{cert('a.key')}&ca=#{cert('ca.pem')}&verify_mode=force_peer")
      expect { tls_get(server, "/env") }.to raise_error(OpenSSL::SSL::SSLError, /certificate required|alert/)
      env = JSON.parse(body_of(tls_get(server, "/env", client_cert: true)))
      expected, = Open3.capture2("openssl", "x509", "-in", cert("client.pem"), "-noout", "-subject",
                                 "-nameopt", "RFC2253")
      expect(env["SSL_CLIENT_S_DN"]).to eq(expected.strip.delete_prefix("subject="))
      expect(env).to include("SSL_CLIENT_VERIFY" => "SUCCESS", "cert" => true)
    end

    it "asks for one with verify_mode=peer and serves clients without" do
      server = start_tls("cert=#{cert('a.pem')}&key=#{cert('a.key')}&ca=#{cert('ca.pem')}&verify_mode=peer")
      expect(JSON.parse(body_of(tls_get(server, "/env")))).to include("SSL_CLIENT_VERIFY" => "NONE", "cert" => false)
      expect(JSON.parse(body_of(tls_get(server, "/env", client_cert: true)))["SSL_CLIENT_S_DN"]).to include("CN=alice")
    end
  end

  describe "reloading certificates", stress: false do
    def live(name)
      FileUtils.cp(cert("#{name}.pem"), cert("live.pem"))
      FileUtils.cp(cert("#{name}.key"), cert("live.key"))
    end

    let(:live_query) { "cert=#{cert('live.pem')}&key=#{cert('live.key')}" }

    def served_serial(server)
      tls_socket(server).peer_cert.serial
    end

    it "on HUP in single mode: new handshakes get the new one, a bad one is logged and the old kept" do
      live("a")
      server = start_tls(live_query)
      expect(served_serial(server)).to eq(serial_of(cert("a.pem")))
      kept = tls_socket(server)
      live("c") # c.test's certificate (the client checks the chain, not the name, here)
      server.signal("HUP")
      expect(server.wait_for_output(/HUP: certificates reloaded/)).to be(true)
      expect(served_serial(server)).to eq(serial_of(cert("c.pem")))
      kept.write("GET /kept HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
      expect(kept.read).to include("hello /kept")
      expect(kept.peer_cert.serial).to eq(serial_of(cert("a.pem")))

      File.write(cert("live.pem"), "not a certificate\n")
      server.signal("HUP")
      expect(server.wait_for_output(/certificate not reloaded: .*live.pem: holds no certificate/)).to be(true)
      expect(served_serial(server)).to eq(serial_of(cert("c.pem")))
    end

    it "on ctl reload-certs in cluster mode, in every worker" do
      live("a")
      control = "unix://#{File.join(@certs, 'control.sock')}"
      server = start_tls(live_query, "--control-url", control, workers: 2)
      before = Array.new(12) { JSON.parse(body_of(tls_get(server, "/env")))["pid"] }.uniq
      expect(before.size).to eq(2), "connections reached both workers: #{before}"
      live("c")
      out, err, status = Open3.capture3(*butterflies_command("ctl", "-C", control, "reload-certs"))
      expect(status).to be_success, err
      answer = JSON.parse(out)
      expect(answer["workers"].map { |w| w["reload_certs"]["errors"] }).to eq([[], []])
      seen = Array.new(12) do
        socket = tls_socket(server)
        socket.write("GET /env HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        [JSON.parse(body_of(socket.read))["pid"], socket.peer_cert.serial]
      end
      expect(seen.map(&:first).uniq.size).to eq(2)
      expect(seen.map(&:last).uniq).to eq([serial_of(cert("c.pem"))])
    end
  end

  describe "session resumption", stress: false do
    it "resumes on whichever worker a reconnection reaches" do
      server = start_tls(nil, workers: 2)
      first = tls_socket(server, version: OpenSSL::SSL::TLS1_3_VERSION)
      first.write("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
      first.read # the tickets come after the handshake
      results = Array.new(16) do
        socket = tls_socket(server, version: OpenSSL::SSL::TLS1_3_VERSION, session: @last_session)
        socket.write("GET /env HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        pid = JSON.parse(body_of(socket.read))["pid"]
        [pid, socket.session_reused?]
      end
      expect(results.map(&:first).uniq.size).to eq(2), "reconnections reached both workers"
      expect(results.map(&:last)).to all(be(true))
    end

    it "resumes a ticket from before a phased restart on workers that re-executed themselves" do
      server = start_tls(nil, "--preload", workers: 2)
      first = tls_socket(server, version: OpenSSL::SSL::TLS1_3_VERSION)
      first.write("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
      first.read
      ticket = @last_session.to_der
      old_pids = ready_workers(server).values
      server.signal("USR1") # with preload_app!, the new workers exec themselves
      expect(server.wait_for_matches(/worker \d \(pid \d+\) ready/, 4, timeout: 60)).to be(true), server.output
      wait_until(timeout: 30, message: "the old workers gone") { old_pids.none? { |pid| alive?(pid) } }
      results = Array.new(8) do
        socket = tls_socket(server, version: OpenSSL::SSL::TLS1_3_VERSION,
                                    session: OpenSSL::SSL::Session.new(ticket))
        socket.write("GET /env HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        [JSON.parse(body_of(socket.read))["pid"], socket.session_reused?]
      end
      expect(results.map(&:first) & old_pids).to be_empty, "served by the new workers"
      expect(results.map(&:last)).to all(be(true))
    end
  end

  describe "configuration", stress: false do
    it "takes ssl_bind in the config file, beside a plain bind" do
      config = File.join(@certs, "butterflies.rb")
      File.write(config, "ssl_bind '127.0.0.1', 0, cert: #{cert('a.pem').inspect}, key: #{cert('a.key').inspect}, " \
                         "sni: { 'b.test' => { cert: #{cert('b.pem').inspect}, key: #{cert('b.key').inspect} } }\n" \
                         "bind 'tcp://127.0.0.1:#{plain_port = free_port}'\n")
      server = ServerProcess.start(butterflies_command("-C", config, rackup))
      (@servers ||= []) << server
      expect(server.wait_for_output(%r{Listening on http://127\.0\.0\.1:#{plain_port}})).to be(true)
      expect(server.output).to match(%r{Listening on https://127\.0\.0\.1:#{server.port}})
      expect(tls_socket(server, host: "b.test").peer_cert.subject.to_s).to eq("/CN=b.test")
      plain = JSON.parse(Net::HTTP.get(URI("http://127.0.0.1:#{plain_port}/env")))
      expect(plain).to include("rack.url_scheme" => "http", "rack.hijack?" => true)
      expect(plain).not_to have_key("HTTPS")
    end

    it "says in one line which file is wrong" do
      mismatched = "cert=#{cert('a.pem')}&key=#{cert('b.key')}"
      missing = "cert=#{cert('nope.pem')}&key=#{cert('a.key')}"
      good = "cert=#{cert('a.pem')}&key=#{cert('a.key')}"
      port = free_port
      [[mismatched, /b\.key: is not the key of the certificate in .*a\.pem/],
       [missing, /nope\.pem: cannot be read: No such file/],
       ["#{good}&ssl_cipher_filter=HIGH", /ssl_cipher_filter is an OpenSSL option/],
       [good, %r{127\.0\.0\.1:#{port} is bound twice, plain \(tcp://\) and TLS}, ["-b", "tcp://127.0.0.1:#{port}"]]]
        .each do |query, message, extra = []|
        out, err, status = Open3.capture3(*butterflies_command("-b", "ssl://127.0.0.1:#{port}?#{query}",
                                                               *extra, rackup))
        expect(status.exitstatus).to eq(2) # a configuration error
        expect(out + err).to match(message)
        expect((out + err).lines.grep(/butterflies:/).size).to eq(1), out + err
        expect(out + err).not_to include(".rb:"), "no backtrace: #{out + err}"
      end
    end

    it "makes a development certificate once when ssl:// has none, and refuses that in production" do
      dir = File.join(@certs, "dev")
      env = { "BUTTERFLIES_DEV_CERT_DIR" => dir }
      server = ServerProcess.start(butterflies_command("-b", "ssl://127.0.0.1:0", rackup), env: env)
      (@servers ||= []) << server
      expect(server.output).to include("self-signed development certificate #{dir}/localhost.crt")
      out, err, status = Open3.capture3("curl", "-sS", "--cacert", "#{dir}/localhost.crt",
                                        "https://localhost:#{server.port}/dev")
      expect(status).to be_success, err
      expect(out).to eq("hello /dev\n")
      made = File.mtime("#{dir}/localhost.crt")
      second = ServerProcess.start(butterflies_command("-b", "ssl://127.0.0.1:0", rackup), env: env)
      @servers << second
      expect(File.mtime("#{dir}/localhost.crt")).to eq(made)

      out, err, status = Open3.capture3(env, *butterflies_command("-b", "ssl://127.0.0.1:0", "-e", "production",
                                                                  rackup))
      expect(status.exitstatus).to eq(2)
      expect(out + err).to include("give cert= and key=")
    end
  end
end
