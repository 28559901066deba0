from core.services import machines


async def test_add_and_list_machine(core, admin):
    await machines.add_machine(core, admin, name="PC01", mac="5254.0012.3456")
    listed = await machines.list_machines(core, admin)
    assert [(m.name, m.mac) for m in listed] == [("pc01", "52:54:00:12:34:56")]
