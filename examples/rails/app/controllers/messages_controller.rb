# frozen_string_literal: true

# Messages kept in the session: a page, a form, and its POST.
class MessagesController < ApplicationController
  def index
    render plain: "Messages: #{(session[:messages] || []).join(', ')}"
  end

  def new; end

  def create
    (session[:messages] ||= []) << params.require(:message)
    redirect_to messages_path
  end
end
