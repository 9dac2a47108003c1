# frozen_string_literal: true

Rails.application.routes.draw do
  root "messages#index"
  resources :messages, only: %i[index new create]
  get "report", to: "reports#show"
end
