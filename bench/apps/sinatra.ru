# frozen_string_literal: true

require "sinatra/base"

# Sinatra's hello.
class BenchHello < Sinatra::Base
  set :logging, false
  get("/") { "Hello world!" }
end
run BenchHello
