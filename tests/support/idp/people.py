"""The campus the test identity server knows: accounts, passwords, attributes."""

PEOPLE = {
    "alice": {
        "password": "alice-pw",
        "displayName": "Alice Anderson",
        "mail": "alice@campus.test",
        "eduPersonAffiliation": ["staff", "member"],
        "departmentCode": "CS",
        "groups": ["gpu-admins", "hpc-users"],
    },
    "bob": {
        "password": "bob-pw",
        "displayName": "张伯",
        "mail": "bob@campus.test",
        "eduPersonAffiliation": ["student"],
        "departmentCode": "PHYS",
        "groups": ["hpc-users"],
    },
    # Shares its name with the local admin account of the Hangar under test.
    "admin": {
        "password": "campus-admin-pw",
        "displayName": "Campus Admin",
        "mail": "admin@campus.test",
        "eduPersonAffiliation": ["staff"],
        "departmentCode": "IT",
        "groups": [],
    },
}


def cas_attributes(user, service):
    """mama-cas attribute callback: what serviceValidate returns for this user."""
    person = PEOPLE.get(user.get_username(), {})
    return {k: v for k, v in person.items() if k not in {"password", "groups"}}
