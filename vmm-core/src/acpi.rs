//! ACPI tables the VMM writes into guest memory (RSDP, XSDT, FADT, MADT, DSDT).
