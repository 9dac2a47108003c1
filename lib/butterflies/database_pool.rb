# frozen_string_literal: true

module Butterflies
  # Active Record's connection pool bounds the app threads. A thread that
  # runs a query holds a connection; with more app threads than
  # connections, the extra ones wait for one and fail after a few seconds
  # (ActiveRecord::ConnectionTimeoutError: a 500). A generated Rails app's
  # pool is RAILS_MAX_THREADS, else 5 (config/database.yml), so once the
  # app is loaded and uses Active Record, the threads are capped at its
  # pool: below the cap, the pool of app threads grows as always.
  module DatabasePool
    module_function

    # The pool's size, when the loaded app uses Active Record.
    def size
      return nil unless defined?(::ActiveRecord::Base)

      size = ::ActiveRecord::Base.connection_pool.size
      size if size.is_a?(Integer) && size.positive?
    rescue StandardError # no database configured: nothing to fit
      nil
    end

    # Caps `config`'s app threads at the pool; returns the line that says
    # so, or nil when they fit already.
    def fit!(config)
      pool = size or return nil
      max = config[:max_threads] || config[:threads]
      return nil if max <= pool && config[:threads] <= pool

      asked = config.thread_range
      config[:threads] = [config[:threads], pool].min
      config[:max_threads] = [max, pool].min
      "* app threads #{asked} capped at #{pool}: Active Record's connection pool " \
        "(pool in config/database.yml, RAILS_MAX_THREADS)"
    end
  end
end
