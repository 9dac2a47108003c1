# frozen_string_literal: true

# WebSocket echo over rack.hijack:
#   bundle exec butterflies examples/websocket/config.ru
require_relative "echo"
run WebSocketEcho
