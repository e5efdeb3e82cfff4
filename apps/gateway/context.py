"""`hangar_demo` in every template: the first-run demo's rows, read only when a
template asks (apps/gateway/demo.py), so pages can mark it and offer its removal."""

from django.utils.functional import SimpleLazyObject

from apps.gateway import demo


def demo_objects(request):
    return {"hangar_demo": SimpleLazyObject(demo.objects)}
