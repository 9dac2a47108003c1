# frozen_string_literal: true

require "json"

module Butterflies
  # Questions about a process that only the process itself can answer:
  # its threads' backtraces and its GC statistics (`butterflies ctl
  # thread-backtraces`, `gc-stats`). Single mode answers for itself. A
  # cluster master asks each worker over a Unix socket pair made when it
  # forks it: one line "SEQ NAME" out, one line "SEQ JSON" back, answered
  # by a thread in the worker. The sequence number keeps a late answer
  # (from a worker that missed an earlier deadline) from being taken for
  # the answer to a later question.
  module Inquiry
    NAMES = %w[thread-backtraces gc-stats reload-certs].freeze
    # How long the master waits for all its workers' answers, unless the
    # question says (`?timeout=SECONDS`, at most MAX_SECONDS). Asked from
    # a control server thread: the master's loop never waits for it.
    ANSWER_SECONDS = 2
    MAX_SECONDS = 60

    # This process's answer to `name`: Puma's shape for each (an Array of
    # { name, backtrace }, or GC.stat); for reload-certs, what the engine
    # (this process's, if it has one) said of its TLS binds.
    def self.answer(name, engine = nil)
      case name
      when "reload-certs" then reload_certs(engine)
      when "thread-backtraces" then backtraces
      when "gc-stats" then GC.stat
      else raise ArgumentError, "no such inquiry: #{name}"
      end
    end

    def self.backtraces
      Thread.list.map do |t|
        { "name" => t.name || (t == Thread.main ? "main" : "thread #{t.object_id.to_s(36)}"), "status" => t.status.to_s,
          "backtrace" => t.backtrace || [] }
      end
    end

    # Reads the TLS binds' certificates again (Engine#reload_tls): how many
    # binds there are, and the problems of those that kept their old ones.
    def self.reload_certs(engine)
      return { "tls_binds" => 0, "errors" => [] } unless engine

      { "tls_binds" => engine.tls_addresses.size, "errors" => engine.reload_tls }
    end

    # In a worker: answers the master's questions on `io`, in a thread of
    # its own, until the master closes its end.
    def self.serve(io, engine = nil)
      Thread.new do
        Thread.current.name = "butterflies-inquiries"
        while (line = io.gets)
          seq, name = line.chomp.split(" ", 2)
          io.write("#{seq} #{encoded(name, engine)}\n")
        end
      rescue IOError, SystemCallError
        nil
      ensure
        io.close
      end
    end

    # The answer as one line of JSON; an error (an unknown name, a
    # backtrace JSON cannot encode) is answered too, never left unanswered.
    def self.encoded(name, engine = nil)
      JSON.generate(answer(name, engine))
    rescue StandardError => e
      JSON.generate("error" => "#{e.class}: #{e.message}")
    end

    # The master's side: one question to many workers at a time.
    class Asker
      def initialize
        @seq = 0
      end

      # The master's answer and each worker's (`workers`: the master's
      # records, with index, pid, phase and channel), labelled.
      def cluster(workers, name, seconds, engine = nil)
        key = name.tr("-", "_")
        answers = ask(workers.to_h { |w| [w, w.channel] }, name, seconds)
        {
          "master" => { "pid" => Process.pid, key => Inquiry.answer(name, engine) },
          "workers" => workers.sort_by(&:index).map do |w|
            answer = answers[w]
            { "index" => w.index, "pid" => w.pid, "phase" => w.phase }
              .merge(answer.nil? ? { "error" => "no answer within #{seconds}s" } : { key => answer })
          end
        }
      end

      # Asks each of `channels` (worker key => its socket) `name`; returns
      # worker key => the parsed answer, or nil for a worker that did not
      # answer within `seconds`.
      def ask(channels, name, seconds)
        seq = (@seq += 1).to_s
        waiting = channels.select { |_, io| question(io, seq, name) }
        answers = channels.transform_values { nil }
        collect(waiting, seq, answers, Butterflies.monotonic + seconds)
        answers
      end

      private

      # Drops what a late answer left, then asks; false if the worker is gone.
      def question(io, seq, name)
        loop { break unless io.read_nonblock(65_536, exception: false).is_a?(String) }
        io.write("#{seq} #{name}\n")
        true
      rescue IOError, SystemCallError
        false
      end

      def collect(waiting, seq, answers, deadline)
        buffers = waiting.transform_values { +"" }
        until waiting.empty? || (left = deadline - Butterflies.monotonic) <= 0
          ready = wait_for_answers(waiting, left)
          ready.each { |io| read_answer(io, waiting, buffers, seq, answers) }
        end
      end

      # The sockets with something to read; a worker reaped meanwhile (its
      # socket closed by the master's loop, on another thread) is dropped.
      def wait_for_answers(waiting, seconds)
        waiting.reject! { |_, io| io.closed? }
        ready, = IO.select(waiting.values, nil, nil, seconds)
        ready || []
      rescue IOError
        []
      end

      def read_answer(io, waiting, buffers, seq, answers)
        key = waiting.key(io)
        waiting.delete(key) if take(io, buffers[key], seq) { |answer| answers[key] = answer }
      end

      # Reads what `io` has; yields the answer and returns true once a line
      # with this `seq` came (or the worker is gone).
      def take(io, buffer, seq)
        chunk = io.read_nonblock(1 << 20, exception: false)
        return true if chunk.nil?
        return false unless chunk.is_a?(String)

        buffer << chunk
        while (line = buffer.slice!(/\A[^\n]*\n/))
          mine, json = line.chomp.split(" ", 2)
          next unless mine == seq

          yield JSON.parse(json)
          return true
        end
        false
      rescue IOError, SystemCallError, JSON::ParserError
        true
      end
    end
  end
end
