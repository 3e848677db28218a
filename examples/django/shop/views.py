"""A view enqueues, a worker runs, another view shows the result."""

from django.db import transaction
from django.http import HttpRequest, JsonResponse

from shop import tasks

try:  # Django >= 6
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:  # the django-tasks backport
    from django_tasks.exceptions import TaskResultDoesNotExist  # type: ignore[no-redef]


def add_view(request: HttpRequest) -> JsonResponse:
    result = tasks.add.enqueue(int(request.GET["a"]), int(request.GET["b"]))
    return JsonResponse({"id": result.id, "status": str(result.status)}, status=202)


def order_view(request: HttpRequest) -> JsonResponse:
    """The job and the order commit together, or neither does (``?fail=1`` rolls back)."""
    try:
        with transaction.atomic(using="pg"):
            result = tasks.add.enqueue(1, 1)
            if request.GET.get("fail"):
                raise RuntimeError("payment declined")
    except RuntimeError as exc:
        return JsonResponse({"error": str(exc), "id": result.id}, status=402)
    return JsonResponse({"id": result.id}, status=202)


def result_view(request: HttpRequest, result_id: str) -> JsonResponse:
    try:
        result = tasks.add.get_result(result_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"error": "no such job"}, status=404)
    body: dict[str, object] = {"status": str(result.status), "attempts": result.attempts}
    if result.is_finished and not result.errors:
        body["value"] = result.return_value
    return JsonResponse(body)
