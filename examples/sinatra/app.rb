# frozen_string_literal: true

require "sinatra/base"

# A small Sinatra app: a page, a JSON route, and a form POST.
class Greeter < Sinatra::Base
  get "/" do
    "Hello from Sinatra!"
  end

  get "/hello/:name" do
    content_type :json
    %({"hello":"#{params[:name]}"})
  end

  get "/form" do
    '<form method="post" action="/greet"><input name="name"><button>Go</button></form>'
  end

  post "/greet" do
    "Nice to meet you, #{params[:name]}."
  end
end
