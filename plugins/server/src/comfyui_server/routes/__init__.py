"""The server's route modules; each exposes ``add_routes(routes, server)`` and ``comfyui_server.app`` lists them."""
