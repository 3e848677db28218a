from django.urls import path
from shop import views

urlpatterns = [
    path("add", views.add_view),
    path("order", views.order_view),
    path("result/<str:result_id>", views.result_view),
]
