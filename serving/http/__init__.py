"""The HTTP service: the app factory, the request edge, routes and error responses. The only
layer that imports FastAPI or Starlette."""
