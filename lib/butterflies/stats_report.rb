# frozen_string_literal: true

require "json"
require "time"

module Butterflies
  # `/stats` (Puma's shape, plus Butterflies' own keys) and `/metrics`
  # (Prometheus text exposition) from the shared stats region
  # (Butterflies::Stats) and what the master knows of its workers.
  class StatsReport
    # `workers`: nil in single mode; else the master's view, a Hash per
    # worker: index:, pid:, phase:, booted:, slot:. `log_dropped`: lines
    # the reporting process (master, or single mode) dropped from its own
    # log (the workers' count in the region).
    def initialize(stats, config, started_at:, workers: nil, phase: 0, log_dropped: 0)
      @snapshot = stats.snapshot
      @log_dropped = log_dropped
      @config = config
      @started_at = started_at
      @workers = workers
      @phase = phase
    end

    # Puma's /stats: the cluster shape, or the single-mode one at top level.
    def stats
      return single_stats if @workers.nil?

      statuses = @workers.map { |w| worker_status(w) }
      {
        "started_at" => @started_at.utc.iso8601,
        "workers" => @workers.size,
        "phase" => @phase,
        "booted_workers" => @workers.count { |w| w[:booted] },
        "old_workers" => @workers.count { |w| w[:phase] != @phase },
        "worker_status" => statuses,
        "butterflies" => own_keys
      }
    end

    def metrics
      lines = []
      counters(lines)
      gauges(lines)
      histograms(lines)
      restarts(lines) if @workers
      "#{lines.join("\n")}\n"
    end

    # systemd's STATUS= line for a cluster of `wanted` workers in `phase`.
    def status_line(wanted, phase)
      totals = stats["butterflies"]["totals"]
      served = %w[1xx 2xx 3xx 4xx 5xx].sum { |c| totals["requests_#{c}"] }
      queued = stats["worker_status"].sum { |w| w["last_status"]["backlog"] }
      "#{stats['booted_workers']} of #{wanted} workers ready (phase #{phase}), #{served} requests, #{queued} queued"
    end

    private

    def live
      @snapshot[:live]
    end

    def slot(at)
      live.find { |s| s[:slot] == at }
    end

    def single_stats
      s = live.first || { values: Hash.new(0) }
      last_status(s[:values]).merge("started_at" => @started_at.utc.iso8601, "butterflies" => own_keys)
    end

    def worker_status(worker)
      s = slot(worker[:slot])
      values = s ? s[:values] : Hash.new(0)
      {
        "started_at" => s ? Time.at(s[:started_ms] / 1000.0).utc.iso8601 : nil,
        "pid" => worker[:pid],
        "index" => worker[:index],
        "phase" => worker[:phase],
        "booted" => worker[:booted],
        "last_checkin" => s ? (Time.now - s[:beat_age]).utc.iso8601 : nil,
        "last_status" => last_status(values)
      }
    end

    # Puma's per-process figures: backlog (requests waiting for an app
    # thread), running (app threads), pool_capacity (requests it can take
    # now: max_threads less the busy ones), max_threads, busy_threads,
    # requests_count; then Butterflies' own: min_threads, connections,
    # keep_alive (the open ones between requests), and the response bytes
    # held for slow clients in memory (parked_bytes) and on disk
    # (spilled_bytes).
    def last_status(values)
      busy = values["busy_threads"].to_i
      {
        "backlog" => values["queued"].to_i,
        "running" => values["threads"].to_i,
        "pool_capacity" => [max_threads - busy, 0].max,
        "max_threads" => max_threads,
        "busy_threads" => busy,
        "requests_count" => requests(values),
        "min_threads" => min_threads,
        "connections" => values["connections"].to_i,
        "keep_alive" => values["keep_alive"].to_i,
        "parked_bytes" => values["parked_bytes"].to_i,
        "spilled_bytes" => values["spilled_bytes"].to_i
      }
    end

    def min_threads
      @config[:threads]
    end

    def max_threads
      @config[:max_threads] || @config[:threads]
    end

    def requests(values)
      %w[1xx 2xx 3xx 4xx 5xx].sum { |c| values["requests_#{c}"].to_i }
    end

    # Totals over every process that ever served, the retired included.
    def own_keys
      totals = Hash.new(0)
      (live.map { |s| s[:values] } + @snapshot[:retired].values.map { |r| r[:values] }).each do |values|
        values.each { |name, n| totals[name] += n unless gauge?(name) }
      end
      totals["log_lines_dropped"] += @log_dropped
      { "totals" => totals, "restarts" => @snapshot[:restarts] }
    end

    def gauge?(name)
      Stats::GAUGES.include?(name)
    end

    # Per worker label: figures of its live processes plus its retired totals.
    def by_worker
      groups = Hash.new { |h, k| h[k] = { values: Hash.new(0), live: Hash.new(0), histograms: {} } }
      live.each { |s| add(groups[label(s[:index])], s, live: true) }
      @snapshot[:retired].each { |index, r| add(groups[label(index)], r, live: false) }
      groups
    end

    def label(index)
      index.negative? || index >= Stats::MAX_WORKERS ? "single" : index.to_s
    end

    def add(group, figures, live:)
      figures[:values].each do |name, n|
        gauge?(name) ? (group[:live][name] += n if live) : group[:values][name] += n
      end
      figures[:histograms].each do |name, h|
        mine = group[:histograms][name] ||= { counts: Array.new(h[:counts].size, 0), sum_seconds: 0.0 }
        h[:counts].each_with_index { |c, i| mine[:counts][i] += c }
        mine[:sum_seconds] += h[:sum_seconds]
      end
    end

    COUNTERS = {
      "butterflies_requests_total" => ["Requests the app answered, by status class.", "code", /\Arequests_(\dxx)\z/],
      "butterflies_rejected_total" => ["Requests answered before the app, by status.", "status", /\Arejected_(\d+)\z/]
    }.freeze

    def counters(lines)
      groups = by_worker
      COUNTERS.each do |metric, (help, key, pattern)|
        header(lines, metric, help, "counter")
        groups.each do |worker, g|
          g[:values].each do |name, n|
            code = name[pattern, 1] or next
            lines << %(#{metric}{worker="#{worker}",#{key}="#{code}"} #{n})
          end
        end
      end
      plain_counters(lines, groups)
    end

    # Counters with only the worker label.
    PLAIN_COUNTERS = {
      "butterflies_received_bytes_total" => ["bytes_in", "Bytes read from clients."],
      "butterflies_sent_bytes_total" => ["bytes_out", "Bytes written to clients."],
      "butterflies_log_lines_dropped_total" => ["log_lines_dropped",
                                                "Log lines dropped because the output was slower than the requests."],
      "butterflies_slow_clients_closed_total" => ["slow_clients_closed",
                                                  "Clients closed, slowest first, when no budget had room for a response."],
      "butterflies_proxy_refused_total" => ["proxy_refused",
                                            "Connections closed for a missing or malformed PROXY protocol header."]
    }.freeze

    def plain_counters(lines, groups)
      PLAIN_COUNTERS.each do |metric, (name, help)|
        header(lines, metric, help, "counter")
        groups.each { |worker, g| lines << %(#{metric}{worker="#{worker}"} #{g[:values][name]}) }
        lines << %(#{metric}{worker="master"} #{@log_dropped}) if name == "log_lines_dropped" && @workers
      end
    end

    def gauges(lines)
      groups = by_worker.select { |_, g| g[:live].any? }
      gauge_help.each do |name, help|
        metric = "butterflies_#{name}"
        header(lines, metric, help, "gauge")
        groups.each { |worker, g| lines << %(#{metric}{worker="#{worker}"} #{g[:live][name]}) }
      end
      { "min_threads" => min_threads, "max_threads" => max_threads }.each do |name, n|
        metric = "butterflies_#{name}"
        header(lines, metric, "The app thread pool's #{name.split('_').first}imum, per process.", "gauge")
        groups.each_key { |worker| lines << %(#{metric}{worker="#{worker}"} #{n}) }
      end
    end

    # The master measures worker memory: single mode has none.
    def gauge_help
      @workers ? GAUGE_HELP : GAUGE_HELP.except("worker_memory_bytes")
    end

    GAUGE_HELP = {
      "connections" => "Open client connections.",
      "keep_alive" => "Open client connections between requests (kept alive).",
      "queued" => "Requests waiting for an app thread.",
      "queue_capacity" => "Requests that may wait before new ones get 503.", "threads" => "App threads.",
      "busy_threads" => "App threads running a request.",
      "parked_bytes" => "Response bytes left in memory with IO threads for slow clients.",
      "spilled_bytes" => "Response bytes spilled to disk for slow clients.",
      "worker_memory_bytes" => "A worker's private memory (USS), as the master last measured it."
    }.freeze

    HISTOGRAMS = {
      "queue" => ["butterflies_queue_seconds", "From a complete request to an app thread taking it."],
      "gvl_wait" => ["butterflies_gvl_wait_seconds", "From a request reaching an app thread to it holding the GVL."],
      "app" => ["butterflies_app_seconds", "From an app thread taking a request to handing its connection back."],
      "proxy_queue" => ["butterflies_proxy_queue_seconds",
                        "From a trusted proxy's X-Request-Start to an app thread taking the request."]
    }.freeze

    def histograms(lines)
      groups = by_worker
      HISTOGRAMS.each do |name, (metric, help)|
        header(lines, metric, help, "histogram")
        groups.each do |worker, g|
          h = g[:histograms][name] or next
          running = 0
          Stats::BUCKETS_SECONDS.each_with_index do |le, i|
            running += h[:counts][i]
            lines << %(#{metric}_bucket{worker="#{worker}",le="#{le}"} #{running})
          end
          total = h[:counts].sum
          lines << %(#{metric}_bucket{worker="#{worker}",le="+Inf"} #{total})
          lines << %(#{metric}_sum{worker="#{worker}"} #{h[:sum_seconds]})
          lines << %(#{metric}_count{worker="#{worker}"} #{total})
        end
      end
    end

    def restarts(lines)
      metric = "butterflies_worker_restarts_total"
      header(lines, metric, "Workers replaced, by reason.", "counter")
      @snapshot[:restarts].each { |reason, n| lines << %(#{metric}{reason="#{reason}"} #{n}) }
    end

    def header(lines, metric, help, type)
      lines << "# HELP #{metric} #{help}"
      lines << "# TYPE #{metric} #{type}"
    end
  end
end
