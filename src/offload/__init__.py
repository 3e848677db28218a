from offload.app import App
