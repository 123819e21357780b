//! Micro-guests: just enough x86-64 machine code for tiny guests (port I/O, stores,
//! string fills, compare-and-branch; each method emits one instruction), and the built-in
//! test card, a real KVM display source that runs even on a software-only KVM.

#[derive(Default)]
pub struct Asm {
    pub code: Vec<u8>,
}

/// A forward branch whose 8-bit displacement is patched by [`Asm::bind`].
pub struct Label(usize);

impl Asm {
    pub fn new() -> Self {
        Self::default()
    }

    fn emit(&mut self, bytes: &[u8]) -> &mut Self {
        self.code.extend_from_slice(bytes);
        self
    }

    pub fn mov_dx(&mut self, v: u16) -> &mut Self {
        self.emit(&[0x66, 0xba]).emit(&v.to_le_bytes())
    }
    pub fn mov_al(&mut self, v: u8) -> &mut Self {
        self.emit(&[0xb0, v])
    }
    pub fn mov_eax(&mut self, v: u32) -> &mut Self {
        self.emit(&[0xb8]).emit(&v.to_le_bytes())
    }
    pub fn mov_ecx(&mut self, v: u32) -> &mut Self {
        self.emit(&[0xb9]).emit(&v.to_le_bytes())
    }
    pub fn mov_rdi(&mut self, v: u64) -> &mut Self {
        self.emit(&[0x48, 0xbf]).emit(&v.to_le_bytes())
    }
    pub fn mov_rsi(&mut self, v: u64) -> &mut Self {
        self.emit(&[0x48, 0xbe]).emit(&v.to_le_bytes())
    }
    pub fn mov_rbx(&mut self, v: u64) -> &mut Self {
        self.emit(&[0x48, 0xbb]).emit(&v.to_le_bytes())
    }
    /// `out dx, al`
    pub fn out_al(&mut self) -> &mut Self {
        self.emit(&[0xee])
    }
    /// `out dx, eax`
    pub fn out_eax(&mut self) -> &mut Self {
        self.emit(&[0xef])
    }
    /// `in al, dx`
    pub fn in_al(&mut self) -> &mut Self {
        self.emit(&[0xec])
    }
    /// `in eax, dx`
    pub fn in_eax(&mut self) -> &mut Self {
        self.emit(&[0xed])
    }
    /// `rep outsb`: write the bytes at [rsi] to port dx, one by one, rcx times.
    pub fn rep_outsb(&mut self) -> &mut Self {
        self.emit(&[0xf3, 0x6e])
    }
    /// `rep outsw`: write the 16-bit words at [rsi] to port dx, rcx times.
    pub fn rep_outsw(&mut self) -> &mut Self {
        self.emit(&[0x66, 0xf3, 0x6f])
    }
    /// `rep insb`: read rcx bytes from port dx into [rdi].
    pub fn rep_insb(&mut self) -> &mut Self {
        self.emit(&[0xf3, 0x6c])
    }
    /// Raw bytes (data the guest reads, placed after its code).
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.emit(data)
    }
    /// `rep stosd`: store eax at [rdi], ecx times.
    pub fn rep_stosd(&mut self) -> &mut Self {
        self.emit(&[0xf3, 0xab])
    }
    /// `mov eax, [rbx]`
    pub fn load_eax_rbx(&mut self) -> &mut Self {
        self.emit(&[0x8b, 0x03])
    }
    /// `mov [rbx], eax`
    pub fn store_eax_rbx(&mut self) -> &mut Self {
        self.emit(&[0x89, 0x03])
    }
    /// `cmp eax, imm32`
    pub fn cmp_eax(&mut self, v: u32) -> &mut Self {
        self.emit(&[0x3d]).emit(&v.to_le_bytes())
    }
    /// `cmp al, imm8`
    pub fn cmp_al(&mut self, v: u8) -> &mut Self {
        self.emit(&[0x3c, v])
    }
    /// `jne` to a label bound later.
    pub fn jne(&mut self) -> Label {
        self.emit(&[0x75, 0]);
        Label(self.code.len())
    }
    /// `jmp` to a label bound later.
    pub fn jmp(&mut self) -> Label {
        self.emit(&[0xeb, 0]);
        Label(self.code.len())
    }
    pub fn bind(&mut self, label: Label) -> &mut Self {
        let disp = self.code.len() - label.0;
        // Micro-guests are written by hand: a longer branch is a bug in the guest's source.
        self.code[label.0 - 1] = u8::try_from(disp).expect("branch within 127 bytes");
        self
    }
    /// `ud2`: an invalid opcode; with no IDT this escalates to a triple fault.
    pub fn ud2(&mut self) -> &mut Self {
        self.emit(&[0x0f, 0x0b])
    }
    /// `jmp $`
    pub fn spin(&mut self) -> &mut Self {
        self.emit(&[0xeb, 0xfe])
    }

    /// Writes `text` to COM1.
    pub fn print(&mut self, text: &str) -> &mut Self {
        self.mov_dx(0x3f8);
        for b in text.bytes() {
            self.mov_al(b).out_al();
        }
        self
    }

    /// Pulses the i8042 reset line: the partition ends with a reset status.
    pub fn reset(&mut self) -> &mut Self {
        self.mov_dx(0x64).mov_al(0xfe).out_al().spin()
    }
}

impl Asm {
    /// `inc ebx`
    pub fn inc_ebx(&mut self) -> &mut Self {
        self.emit(&[0xff, 0xc3])
    }
    /// `mov eax, ebx`
    pub fn mov_eax_ebx(&mut self) -> &mut Self {
        self.emit(&[0x89, 0xd8])
    }
    /// `loop $`: spins `ecx` times (a delay that needs no timer).
    pub fn loop_self(&mut self) -> &mut Self {
        self.emit(&[0xe2, 0xfe])
    }
    /// Current position, for a backward jump.
    pub fn here(&self) -> usize {
        self.code.len()
    }
    /// `jmp` back to `target` (a position from [`Asm::here`]) with a 32-bit displacement.
    pub fn jmp_back(&mut self, target: usize) -> &mut Self {
        let disp = target as i64 - (self.code.len() as i64 + 5);
        self.emit(&[0xe9]).emit(&(disp as i32).to_le_bytes())
    }
}

/// The eight label colours, as bands of the test card (XRGB).
pub const TEST_CARD_COLOURS: [u32; 8] = [
    0x00cc_0000,
    0x00f5_7900,
    0x00ed_d400,
    0x0073_d216,
    0x0055_5555,
    0x0034_65a4,
    0x0075_507b,
    0x0000_0000,
];

/// Rows at the top of the test card that change colour every frame.
pub const TEST_CARD_ANIMATED_ROWS: u32 = 16;

/// A guest that paints eight vertical-order bands in the label colours, then forever
/// repaints the top rows with a changing colour, so a display shows steady damage.
pub fn test_card(framebuffer: u64, width: u32, height: u32) -> Vec<u8> {
    let mut asm = Asm::new();
    let pixels = width * height;
    asm.mov_rdi(framebuffer);
    for (i, colour) in TEST_CARD_COLOURS.iter().enumerate() {
        let band = pixels / 8 + if i == 7 { pixels % 8 } else { 0 };
        asm.mov_eax(*colour).mov_ecx(band).rep_stosd();
    }
    asm.print("TEST-CARD-READY\n");
    let top = asm.here();
    asm.inc_ebx()
        .mov_eax_ebx()
        .mov_rdi(framebuffer)
        .mov_ecx(width * TEST_CARD_ANIMATED_ROWS)
        .rep_stosd()
        .mov_ecx(0x2_0000)
        .loop_self()
        .jmp_back(top);
    asm.code
}
