import pytest

from conftest import browser_login


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_login_through_the_form_reaches_the_dashboard(page, alice):
    browser_login(page, alice)
    assert page.locator("h1").inner_text().startswith("Hello")


def test_account_pages_use_the_product_layout(client, alice):
    login_page = client.get("/accounts/login/")
    assert login_page.status_code == 200
    assert "css/app.css" in login_page.text and "Sign in to the CRM" in login_page.text
    assert 'name="login"' in login_page.text and 'name="password"' in login_page.text
    reset_page = client.get("/accounts/password/reset/")
    assert reset_page.status_code == 200 and "css/app.css" in reset_page.text
    client.force_login(alice)
    logout_page = client.get("/accounts/logout/")
    assert 'class="topbar"' in logout_page.text and 'class="stacked panel auth-form"' in logout_page.text
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/people/").status_code == 302


def test_wrong_password_is_reported_on_the_form(client, alice):
    response = client.post("/accounts/login/", {"login": alice.email, "password": "not-the-password"})
    assert response.status_code == 200
    assert "The email address and/or password you specified are not correct." in response.text
