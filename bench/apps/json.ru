# frozen_string_literal: true

# About 1 KB of JSON generated per request.
require "json"

ITEMS = Array.new(20) { |i| { id: i, name: "item #{i}", price: i * 1.5, tags: %w[a b c] } }.freeze
run ->(_env) { [200, { "content-type" => "application/json" }, [JSON.generate(items: ITEMS)]] }
