# frozen_string_literal: true

require_relative "boot"
require "rails"
require "action_controller/railtie"
require "active_record/railtie"

# A minimal Rails app: cookie sessions, CSRF protection on, and Active
# Record on SQLite with the pool a generated app has (config/database.yml).
module Notes
  # The app's configuration.
  class Application < Rails::Application
    config.load_defaults Rails::VERSION::STRING.to_f # 6.1 or 7.2, whichever runs
    config.eager_load = false
    config.consider_all_requests_local = true
    config.secret_key_base = "butterflies-example-not-secret-#{'x' * 64}"
    config.logger = Logger.new($stdout, level: :warn)
    config.hosts.clear
  end
end
