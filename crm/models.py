from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower

# Free-text notes on records: long enough for any real note, short enough that a form post cannot store
# megabytes that every page of the record then carries (enforced by forms and the admin).
NOTES_MAX_LENGTH = 10_000


class Team(models.Model):
    """A group of users inside the company; records with "team" visibility are shared within it."""

    name = models.CharField(max_length=100, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra):
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra):
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra):
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        extra.setdefault("role", User.Role.ADMIN)
        return self._create_user(email, password, **extra)


class User(AbstractUser):
    """A member of the company that runs this deployment. Logs in with email + password."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        USER = "user", "Regular user"

    username = None
    email = models.EmailField("email address", unique=True)
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.USER)
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="members")

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = UserManager()

    class Meta:
        ordering = ["email"]
        constraints = [models.UniqueConstraint(Lower("email"), name="user_email_ci_unique")]

    def __str__(self) -> str:
        return self.get_full_name() or self.email

    @property
    def is_company_admin(self) -> bool:
        return self.role == self.Role.ADMIN or self.is_superuser

    def save(self, *args, **kwargs):
        self.email = (self.email or "").strip().lower()
        super().save(*args, **kwargs)


class Visibility(models.TextChoices):
    OWNER = "owner", "Owner only"
    TEAM = "team", "Owner's team"
    COMPANY = "company", "Entire company"


class VisibleToQuerySet(models.QuerySet):
    """Records carry an owner and a visibility; admins see every record (never private email)."""

    def visible_to(self, user) -> "VisibleToQuerySet":
        if not user.is_authenticated or not user.is_active:
            return self.none()
        if user.is_company_admin:
            return self
        condition = Q(visibility=Visibility.COMPANY) | Q(owner=user)
        if user.team_id:
            condition |= Q(visibility=Visibility.TEAM, owner__team_id=user.team_id)
        return self.filter(condition)


class OwnedRecord(models.Model):
    owner = models.ForeignKey("crm.User", on_delete=models.PROTECT, related_name="+")
    visibility = models.CharField(max_length=10, choices=Visibility.choices, default=Visibility.COMPANY)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = VisibleToQuerySet.as_manager()

    class Meta:
        abstract = True
