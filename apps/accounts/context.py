from apps.accounts.policy import effective_rights


def rights(request):
    """Templates hide controls the user's roles cannot use (the server checks anyway)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"rights": {"actions": [], "cluster_actions": {}}}
    effective = effective_rights(user)
    anywhere = set(effective["actions"]).union(*map(set, effective["cluster_actions"].values()))
    return {"rights": effective, "can_anywhere": anywhere}
