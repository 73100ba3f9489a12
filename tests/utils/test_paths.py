def test_code_version_names_the_commit():
    from b2lib.utils.paths import code_version

    v = code_version()
    if v is not None:  # a git checkout (CI clones one); None for an installed wheel
        assert len(v["commit"]) == 40 and isinstance(v["dirty"], bool)
