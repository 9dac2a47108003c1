# frozen_string_literal: true

# A request that holds a database connection for a second, as a report
# run in a transaction does.
class ReportsController < ApplicationController
  def show
    answer = ActiveRecord::Base.connection_pool.with_connection do |connection|
      connection.transaction do
        sleep 1
        connection.select_value("SELECT 42")
      end
    end
    render plain: "report #{answer}"
  end
end
