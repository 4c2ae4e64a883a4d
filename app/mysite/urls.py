from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("slow/", views.slow, name="slow"),
    path("whoami/", views.whoami, name="whoami"),
]
