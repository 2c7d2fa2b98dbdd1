{
	"patcher": {
		"appversion": {
			"architecture": "x64",
			"major": 8,
			"minor": 6,
			"modernui": 1,
			"revision": 0
		},
		"autosave": 0,
		"boxanimatetime": 500,
		"boxes": [
			{
				"box": {
					"id": "obj-1",
					"maxclass": "comment",
					"numinlets": 1,
					"numoutlets": 0,
					"outlettype": [],
					"patching_rect": [20.0, 10.0, 560.0, 18.0],
					"text": "MusicGen Bridge: js holds the logic (bridge_core.js); OSC to the bridge on 9000, replies on 9001."
				}
			},
			{
				"box": {
					"id": "obj-2",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 3,
					"outlettype": ["bang", "int", "int"],
					"patching_rect": [20.0, 40.0, 90.0, 20.0],
					"text": "live.thisdevice"
				}
			},
			{
				"box": {
					"id": "obj-3",
					"maxclass": "message",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [20.0, 70.0, 32.0, 20.0],
					"text": "init"
				}
			},
			{
				"box": {
					"id": "obj-4",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [200.0, 40.0, 150.0, 20.0],
					"text": "udpreceive 9001 @defer 1"
				}
			},
			{
				"box": {
					"id": "obj-5",
					"maxclass": "newobj",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": ["bang"],
					"patching_rect": [370.0, 40.0, 190.0, 20.0],
					"text": "metro 8n @quantize 8n @active 1"
				}
			},
			{
				"box": {
					"id": "obj-6",
					"maxclass": "message",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [370.0, 70.0, 34.0, 20.0],
					"text": "beat"
				}
			},
			{
				"box": {
					"id": "obj-7",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["", ""],
					"patching_rect": [20.0, 260.0, 300.0, 20.0],
					"text": "js musicgen_bridge.js"
				}
			},
			{
				"box": {
					"id": "obj-8",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 0,
					"outlettype": [],
					"patching_rect": [20.0, 300.0, 150.0, 20.0],
					"text": "udpsend 127.0.0.1 9000"
				}
			},
			{
				"box": {
					"id": "obj-9",
					"maxclass": "newobj",
					"numinlets": 17,
					"numoutlets": 17,
					"outlettype": ["", "", "", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
					"patching_rect": [200.0, 300.0, 700.0, 20.0],
					"text": "route engine status error buf0 buf1 play0 play1 speed0 speed1 rec recbuf viewbuf jamstate pickfile promptstore promptview"
				}
			},
			{
				"box": {
					"fontsize": 10.0,
					"id": "obj-10",
					"keymode": 1,
					"maxclass": "textedit",
					"numinlets": 1,
					"numoutlets": 4,
					"outlettype": ["", "int", "", ""],
					"parameter_enable": 0,
					"patching_rect": [20.0, 110.0, 250.0, 34.0],
					"presentation": 1,
					"presentation_rect": [4.0, 4.0, 250.0, 34.0],
					"text": "",
					"varname": "prompt"
				}
			},
			{
				"box": {
					"id": "obj-11",
					"maxclass": "newobj",
					"numinlets": 2,
					"numoutlets": 2,
					"outlettype": ["", ""],
					"patching_rect": [20.0, 150.0, 64.0, 20.0],
					"text": "route text"
				}
			},
			{
				"box": {
					"id": "obj-12",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [20.0, 180.0, 90.0, 20.0],
					"text": "prepend prompt"
				}
			},
			{
				"box": {
					"id": "obj-13",
					"maxclass": "live.menu",
					"numinlets": 1,
					"numoutlets": 3,
					"outlettype": ["", "", "float"],
					"parameter_enable": 1,
					"patching_rect": [290.0, 110.0, 80.0, 15.0],
					"presentation": 1,
					"presentation_rect": [258.0, 4.0, 80.0, 15.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_enum": ["acoustic-folk", "ambient-pad", "boom-bap", "cinematic", "drum-and-bass", "dub-reggae", "house-groove", "jazz-trio", "lofi-keys", "synthwave", "techno-drums"],
							"parameter_initial": [0],
							"parameter_initial_enable": 1,
							"parameter_longname": "Preset",
							"parameter_mmax": 10,
							"parameter_shortname": "Preset",
							"parameter_type": 2
						}
					},
					"varname": "Preset"
				}
			},
			{
				"box": {
					"id": "obj-14",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [290.0, 180.0, 80.0, 20.0],
					"text": "prepend preset"
				}
			},
			{
				"box": {
					"id": "obj-15",
					"maxclass": "live.menu",
					"numinlets": 1,
					"numoutlets": 3,
					"outlettype": ["", "", "float"],
					"parameter_enable": 1,
					"patching_rect": [380.0, 110.0, 44.0, 15.0],
					"presentation": 1,
					"presentation_rect": [342.0, 4.0, 40.0, 15.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_enum": ["1", "2", "4", "8", "16"],
							"parameter_initial": [2],
							"parameter_initial_enable": 1,
							"parameter_longname": "Bars",
							"parameter_mmax": 4,
							"parameter_shortname": "Bars",
							"parameter_type": 2
						}
					},
					"varname": "Bars"
				}
			},
			{
				"box": {
					"id": "obj-16",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [380.0, 180.0, 70.0, 20.0],
					"text": "prepend bars"
				}
			},
			{
				"box": {
					"id": "obj-17",
					"maxclass": "live.menu",
					"numinlets": 1,
					"numoutlets": 3,
					"outlettype": ["", "", "float"],
					"parameter_enable": 1,
					"patching_rect": [460.0, 110.0, 124.0, 15.0],
					"presentation": 1,
					"presentation_rect": [258.0, 22.0, 124.0, 15.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_enum": ["none", "selected MIDI clip", "hum", "audio file", "hum (bridge mic)"],
							"parameter_initial": [0],
							"parameter_initial_enable": 1,
							"parameter_longname": "Melody",
							"parameter_mmax": 4,
							"parameter_shortname": "Melody",
							"parameter_type": 2
						}
					},
					"varname": "Melody"
				}
			},
			{
				"box": {
					"id": "obj-18",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [460.0, 180.0, 80.0, 20.0],
					"text": "prepend melody"
				}
			},
			{
				"box": {
					"id": "obj-19",
					"maxclass": "live.text",
					"mode": 0,
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["", ""],
					"parameter_enable": 1,
					"patching_rect": [600.0, 110.0, 60.0, 18.0],
					"presentation": 1,
					"presentation_rect": [4.0, 42.0, 60.0, 18.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_enum": ["off", "on"],
							"parameter_longname": "Generate",
							"parameter_mmax": 1,
							"parameter_shortname": "Generate",
							"parameter_type": 2,
							"parameter_invisible": 2
						}
					},
					"text": "Generate",
					"texton": "Generate",
					"varname": "Generate"
				}
			},
			{
				"box": {
					"id": "obj-20",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [600.0, 180.0, 90.0, 20.0],
					"text": "prepend generate"
				}
			},
			{
				"box": {
					"id": "obj-21",
					"maxclass": "live.text",
					"mode": 0,
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["", ""],
					"parameter_enable": 1,
					"patching_rect": [700.0, 110.0, 60.0, 18.0],
					"presentation": 1,
					"presentation_rect": [68.0, 42.0, 60.0, 18.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_enum": ["off", "on"],
							"parameter_longname": "Continue",
							"parameter_mmax": 1,
							"parameter_shortname": "Continue",
							"parameter_type": 2,
							"parameter_invisible": 2
						}
					},
					"text": "Continue",
					"texton": "Continue",
					"varname": "Continue"
				}
			},
			{
				"box": {
					"id": "obj-22",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [700.0, 180.0, 90.0, 20.0],
					"text": "prepend continue_track"
				}
			},
			{
				"box": {
					"id": "obj-23",
					"maxclass": "live.text",
					"mode": 1,
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["", ""],
					"parameter_enable": 1,
					"patching_rect": [800.0, 110.0, 60.0, 18.0],
					"presentation": 1,
					"presentation_rect": [132.0, 42.0, 40.0, 18.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_enum": ["off", "on"],
							"parameter_longname": "Jam",
							"parameter_mmax": 1,
							"parameter_shortname": "Jam",
							"parameter_type": 2,
							"parameter_invisible": 2
						}
					},
					"text": "Jam",
					"texton": "Jam",
					"varname": "Jam"
				}
			},
			{
				"box": {
					"id": "obj-24",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [800.0, 180.0, 90.0, 20.0],
					"text": "prepend jam"
				}
			},
			{
				"box": {
					"id": "obj-25",
					"maxclass": "live.text",
					"mode": 0,
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["", ""],
					"parameter_enable": 1,
					"patching_rect": [900.0, 110.0, 60.0, 18.0],
					"presentation": 1,
					"presentation_rect": [176.0, 42.0, 40.0, 18.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_enum": ["off", "on"],
							"parameter_longname": "Stop",
							"parameter_mmax": 1,
							"parameter_shortname": "Stop",
							"parameter_type": 2,
							"parameter_invisible": 2
						}
					},
					"text": "Stop",
					"texton": "Stop",
					"varname": "Stop"
				}
			},
			{
				"box": {
					"id": "obj-26",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [900.0, 180.0, 90.0, 20.0],
					"text": "prepend stop"
				}
			},
			{
				"box": {
					"id": "obj-27",
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"outlettype": [],
					"patching_rect": [20.0, 200.0, 50.0, 18.0],
					"presentation": 1,
					"presentation_rect": [4.0, 64.0, 34.0, 15.0],
					"text": "Temp",
					"textjustification": 0
				}
			},
			{
				"box": {
					"id": "obj-28",
					"maxclass": "live.numbox",
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["", "float"],
					"parameter_enable": 1,
					"patching_rect": [20.0, 220.0, 44.0, 15.0],
					"presentation": 1,
					"presentation_rect": [38.0, 64.0, 40.0, 15.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_initial": [1.0],
							"parameter_initial_enable": 1,
							"parameter_longname": "Temperature",
							"parameter_mmax": 5.0,
							"parameter_mmin": 0.0,
							"parameter_shortname": "Temp",
							"parameter_type": 0,
							"parameter_unitstyle": 1
						}
					},
					"varname": "Temperature"
				}
			},
			{
				"box": {
					"id": "obj-29",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [20.0, 240.0, 120.0, 20.0],
					"text": "prepend param temperature"
				}
			},
			{
				"box": {
					"id": "obj-30",
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"outlettype": [],
					"patching_rect": [160.0, 200.0, 50.0, 18.0],
					"presentation": 1,
					"presentation_rect": [82.0, 64.0, 36.0, 15.0],
					"text": "Guide",
					"textjustification": 0
				}
			},
			{
				"box": {
					"id": "obj-31",
					"maxclass": "live.numbox",
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["", "float"],
					"parameter_enable": 1,
					"patching_rect": [160.0, 220.0, 44.0, 15.0],
					"presentation": 1,
					"presentation_rect": [118.0, 64.0, 40.0, 15.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_initial": [3.0],
							"parameter_initial_enable": 1,
							"parameter_longname": "Guidance",
							"parameter_mmax": 20.0,
							"parameter_mmin": 0.0,
							"parameter_shortname": "Guide",
							"parameter_type": 0,
							"parameter_unitstyle": 1
						}
					},
					"varname": "Guidance"
				}
			},
			{
				"box": {
					"id": "obj-32",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [160.0, 240.0, 120.0, 20.0],
					"text": "prepend param cfg"
				}
			},
			{
				"box": {
					"id": "obj-33",
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"outlettype": [],
					"patching_rect": [300.0, 200.0, 50.0, 18.0],
					"presentation": 1,
					"presentation_rect": [162.0, 64.0, 34.0, 15.0],
					"text": "Top-k",
					"textjustification": 0
				}
			},
			{
				"box": {
					"id": "obj-34",
					"maxclass": "live.numbox",
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["", "float"],
					"parameter_enable": 1,
					"patching_rect": [300.0, 220.0, 44.0, 15.0],
					"presentation": 1,
					"presentation_rect": [196.0, 64.0, 44.0, 15.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_initial": [250.0],
							"parameter_initial_enable": 1,
							"parameter_longname": "Top K",
							"parameter_mmax": 2048.0,
							"parameter_mmin": 0.0,
							"parameter_shortname": "Top-k",
							"parameter_type": 0,
							"parameter_unitstyle": 0
						}
					},
					"varname": "Top K"
				}
			},
			{
				"box": {
					"id": "obj-35",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [300.0, 240.0, 120.0, 20.0],
					"text": "prepend param top_k"
				}
			},
			{
				"box": {
					"id": "obj-36",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [200.0, 340.0, 64.0, 20.0],
					"text": "prepend set"
				}
			},
			{
				"box": {
					"id": "obj-37",
					"maxclass": "comment",
					"numinlets": 1,
					"numoutlets": 0,
					"outlettype": [],
					"patching_rect": [200.0, 370.0, 584.0, 16.0],
					"presentation": 1,
					"presentation_rect": [4.0, 90.0, 584.0, 16.0],
					"text": "",
					"textcolor": [0.75, 0.75, 0.75, 1.0],
					"varname": "engine_line"
				}
			},
			{
				"box": {
					"id": "obj-38",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [290.0, 340.0, 64.0, 20.0],
					"text": "prepend set"
				}
			},
			{
				"box": {
					"id": "obj-39",
					"maxclass": "comment",
					"numinlets": 1,
					"numoutlets": 0,
					"outlettype": [],
					"patching_rect": [290.0, 370.0, 584.0, 16.0],
					"presentation": 1,
					"presentation_rect": [4.0, 108.0, 584.0, 16.0],
					"text": "",
					"textcolor": [0.95, 0.95, 0.95, 1.0],
					"varname": "status_line"
				}
			},
			{
				"box": {
					"id": "obj-40",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [380.0, 340.0, 64.0, 20.0],
					"text": "prepend set"
				}
			},
			{
				"box": {
					"id": "obj-41",
					"maxclass": "comment",
					"numinlets": 1,
					"numoutlets": 0,
					"outlettype": [],
					"patching_rect": [380.0, 370.0, 584.0, 16.0],
					"presentation": 1,
					"presentation_rect": [4.0, 126.0, 584.0, 16.0],
					"text": "",
					"textcolor": [1.0, 0.45, 0.4, 1.0],
					"varname": "error_line"
				}
			},
			{
				"box": {
					"id": "obj-42",
					"maxclass": "newobj",
					"numinlets": 2,
					"numoutlets": 2,
					"outlettype": ["signal", "signal"],
					"patching_rect": [20.0, 420.0, 60.0, 20.0],
					"text": "plugin~"
				}
			},
			{
				"box": {
					"id": "obj-43",
					"maxclass": "newobj",
					"numinlets": 2,
					"numoutlets": 2,
					"outlettype": ["signal", "signal"],
					"patching_rect": [20.0, 640.0, 60.0, 20.0],
					"text": "plugout~"
				}
			},
			{
				"box": {
					"id": "obj-44",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["float", "bang"],
					"patching_rect": [200.0, 460.0, 170.0, 20.0],
					"text": "buffer~ ---mgb_play0"
				}
			},
			{
				"box": {
					"id": "obj-45",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": ["signal"],
					"patching_rect": [200.0, 500.0, 40.0, 20.0],
					"text": "sig~"
				}
			},
			{
				"box": {
					"id": "obj-46",
					"maxclass": "newobj",
					"numinlets": 3,
					"numoutlets": 3,
					"outlettype": ["signal", "signal", "signal"],
					"patching_rect": [200.0, 560.0, 150.0, 20.0],
					"text": "groove~ ---mgb_play0 2"
				}
			},
			{
				"box": {
					"id": "obj-47",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["float", "bang"],
					"patching_rect": [400.0, 460.0, 170.0, 20.0],
					"text": "buffer~ ---mgb_play1"
				}
			},
			{
				"box": {
					"id": "obj-48",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": ["signal"],
					"patching_rect": [400.0, 500.0, 40.0, 20.0],
					"text": "sig~"
				}
			},
			{
				"box": {
					"id": "obj-49",
					"maxclass": "newobj",
					"numinlets": 3,
					"numoutlets": 3,
					"outlettype": ["signal", "signal", "signal"],
					"patching_rect": [400.0, 560.0, 150.0, 20.0],
					"text": "groove~ ---mgb_play1 2"
				}
			},
			{
				"box": {
					"id": "obj-50",
					"maxclass": "newobj",
					"numinlets": 4,
					"numoutlets": 1,
					"outlettype": ["signal"],
					"patching_rect": [600.0, 560.0, 130.0, 20.0],
					"text": "record~ ---mgb_rec 2"
				}
			},
			{
				"box": {
					"id": "obj-51",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["float", "bang"],
					"patching_rect": [760.0, 460.0, 160.0, 20.0],
					"text": "buffer~ ---mgb_rec 1000 2"
				}
			},
			{
				"box": {
					"id": "obj-52",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["float", "bang"],
					"patching_rect": [960.0, 460.0, 160.0, 20.0],
					"text": "buffer~ ---mgb_view"
				}
			},
			{
				"box": {
					"id": "obj-53",
					"maxclass": "message",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [960.0, 500.0, 100.0, 20.0],
					"text": "set ---mgb_view"
				}
			},
			{
				"box": {
					"id": "obj-54",
					"maxclass": "waveform~",
					"numinlets": 5,
					"numoutlets": 6,
					"outlettype": ["float", "float", "float", "float", "list", ""],
					"patching_rect": [960.0, 540.0, 200.0, 78.0],
					"presentation": 1,
					"presentation_rect": [388.0, 4.0, 200.0, 78.0],
					"varname": "waveform"
				}
			},
			{
				"box": {
					"id": "obj-55",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [1000.0, 340.0, 40.0, 20.0],
					"text": "prepend set"
				}
			},
			{
				"box": {
					"id": "obj-56",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["", "bang"],
					"patching_rect": [1060.0, 340.0, 100.0, 20.0],
					"text": "opendialog sound"
				}
			},
			{
				"box": {
					"id": "obj-57",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["", "int"],
					"patching_rect": [1060.0, 370.0, 140.0, 20.0],
					"text": "conformpath slash boot"
				}
			},
			{
				"box": {
					"id": "obj-58",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [1060.0, 400.0, 100.0, 20.0],
					"text": "prepend melodyfile"
				}
			},
			{
				"box": {
					"id": "obj-59",
					"maxclass": "live.text",
					"mode": 0,
					"numinlets": 1,
					"numoutlets": 2,
					"outlettype": ["", ""],
					"parameter_enable": 1,
					"patching_rect": [1000.0, 110.0, 50.0, 18.0],
					"presentation": 1,
					"presentation_rect": [220.0, 42.0, 50.0, 18.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_enum": ["off", "on"],
							"parameter_invisible": 2,
							"parameter_longname": "Rec/Open",
							"parameter_mmax": 1,
							"parameter_shortname": "Rec/Open",
							"parameter_type": 2
						}
					},
					"text": "Rec/Open",
					"texton": "Rec/Open",
					"varname": "Rec/Open"
				}
			},
			{
				"box": {
					"id": "obj-60",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [1000.0, 140.0, 100.0, 22.0],
					"text": "prepend capture"
				}
			},
			{
				"box": {
					"id": "obj-61",
					"maxclass": "live.menu",
					"numinlets": 1,
					"numoutlets": 3,
					"outlettype": ["", "", "float"],
					"parameter_enable": 1,
					"patching_rect": [1100.0, 110.0, 60.0, 15.0],
					"presentation": 1,
					"presentation_rect": [258.0, 40.0, 60.0, 15.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_enum": ["1 take", "2 takes", "3 takes", "4 takes"],
							"parameter_initial": [0],
							"parameter_initial_enable": 1,
							"parameter_longname": "Takes",
							"parameter_mmax": 3,
							"parameter_shortname": "Takes",
							"parameter_type": 2
						}
					},
					"varname": "Takes"
				}
			},
			{
				"box": {
					"id": "obj-62",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [1100.0, 140.0, 90.0, 22.0],
					"text": "prepend takes"
				}
			},
			{
				"box": {
					"id": "obj-63",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 3,
					"outlettype": ["", "", ""],
					"patching_rect": [20.0, 200.0, 160.0, 22.0],
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_invisible": 1,
							"parameter_longname": "Prompt",
							"parameter_shortname": "Prompt",
							"parameter_type": 3
						}
					},
					"saved_object_attributes": {
						"parameter_enable": 1,
						"parameter_mappable": 0
					},
					"text": "pattr mgb_prompt @parameter_enable 1",
					"varname": "mgb_prompt"
				}
			},
			{
				"box": {
					"id": "obj-64",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [20.0, 230.0, 130.0, 22.0],
					"text": "prepend storedprompt"
				}
			},
			{
				"box": {
					"id": "obj-65",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 4,
					"outlettype": ["int", "float", "int", "int"],
					"patching_rect": [200.0, 60.0, 70.0, 22.0],
					"text": "dspstate~"
				}
			},
			{
				"box": {
					"id": "obj-66",
					"maxclass": "newobj",
					"numinlets": 1,
					"numoutlets": 1,
					"outlettype": [""],
					"patching_rect": [200.0, 90.0, 120.0, 22.0],
					"text": "prepend samplerate"
				}
			}
		],
		"classnamespace": "box",
		"default_fontface": 0,
		"default_fontname": "Arial Bold",
		"default_fontsize": 10.0,
		"dependency_cache": [
			{
				"name": "musicgen_bridge.js",
				"patcherrelativepath": ".",
				"type": "TEXT",
				"implicit": 1
			},
			{
				"name": "mgb_bridge_core.js",
				"patcherrelativepath": ".",
				"type": "TEXT",
				"implicit": 1
			},
			{
				"name": "mgb_protocol.js",
				"patcherrelativepath": ".",
				"type": "TEXT",
				"implicit": 1
			},
			{
				"name": "mgb_protocol_data.js",
				"patcherrelativepath": ".",
				"type": "TEXT",
				"implicit": 1
			}
		],
		"description": "MusicGen as a live instrument: generate, continue and jam in time with Live via musicgen-bridge.",
		"devicewidth": 592.0,
		"digest": "",
		"enablehscroll": 1,
		"enablevscroll": 1,
		"fileversion": 1,
		"gridonopen": 1,
		"gridsize": [8.0, 8.0],
		"gridsnaponopen": 1,
		"is_mpe": 0,
		"latency": 0,
		"lines": [
			{
				"patchline": {
					"destination": ["obj-3", 0],
					"source": ["obj-2", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-3", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-4", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-6", 0],
					"source": ["obj-5", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-6", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-8", 0],
					"source": ["obj-7", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-9", 0],
					"source": ["obj-7", 1]
				}
			},
			{
				"patchline": {
					"destination": ["obj-11", 0],
					"source": ["obj-10", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-12", 0],
					"source": ["obj-11", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-12", 0],
					"source": ["obj-11", 1]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-12", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-14", 0],
					"source": ["obj-13", 1]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-14", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-16", 0],
					"source": ["obj-15", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-16", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-18", 0],
					"source": ["obj-17", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-18", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-20", 0],
					"source": ["obj-19", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-20", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-22", 0],
					"source": ["obj-21", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-22", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-24", 0],
					"source": ["obj-23", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-24", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-26", 0],
					"source": ["obj-25", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-26", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-29", 0],
					"source": ["obj-28", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-29", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-32", 0],
					"source": ["obj-31", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-32", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-35", 0],
					"source": ["obj-34", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-35", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-36", 0],
					"source": ["obj-9", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-37", 0],
					"source": ["obj-36", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-38", 0],
					"source": ["obj-9", 1]
				}
			},
			{
				"patchline": {
					"destination": ["obj-39", 0],
					"source": ["obj-38", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-40", 0],
					"source": ["obj-9", 2]
				}
			},
			{
				"patchline": {
					"destination": ["obj-41", 0],
					"source": ["obj-40", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-43", 0],
					"source": ["obj-42", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-43", 1],
					"source": ["obj-42", 1]
				}
			},
			{
				"patchline": {
					"destination": ["obj-44", 0],
					"source": ["obj-9", 3]
				}
			},
			{
				"patchline": {
					"destination": ["obj-45", 0],
					"source": ["obj-9", 7]
				}
			},
			{
				"patchline": {
					"destination": ["obj-46", 0],
					"source": ["obj-9", 5]
				}
			},
			{
				"patchline": {
					"destination": ["obj-46", 0],
					"source": ["obj-45", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-43", 0],
					"source": ["obj-46", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-43", 1],
					"source": ["obj-46", 1]
				}
			},
			{
				"patchline": {
					"destination": ["obj-47", 0],
					"source": ["obj-9", 4]
				}
			},
			{
				"patchline": {
					"destination": ["obj-48", 0],
					"source": ["obj-9", 8]
				}
			},
			{
				"patchline": {
					"destination": ["obj-49", 0],
					"source": ["obj-9", 6]
				}
			},
			{
				"patchline": {
					"destination": ["obj-49", 0],
					"source": ["obj-48", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-43", 0],
					"source": ["obj-49", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-43", 1],
					"source": ["obj-49", 1]
				}
			},
			{
				"patchline": {
					"destination": ["obj-50", 0],
					"source": ["obj-42", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-50", 1],
					"source": ["obj-42", 1]
				}
			},
			{
				"patchline": {
					"destination": ["obj-50", 0],
					"source": ["obj-9", 9]
				}
			},
			{
				"patchline": {
					"destination": ["obj-51", 0],
					"source": ["obj-9", 10]
				}
			},
			{
				"patchline": {
					"destination": ["obj-52", 0],
					"source": ["obj-9", 11]
				}
			},
			{
				"patchline": {
					"destination": ["obj-53", 0],
					"source": ["obj-52", 1]
				}
			},
			{
				"patchline": {
					"destination": ["obj-54", 0],
					"source": ["obj-53", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-55", 0],
					"source": ["obj-9", 12]
				}
			},
			{
				"patchline": {
					"destination": ["obj-23", 0],
					"source": ["obj-55", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-56", 0],
					"source": ["obj-9", 13]
				}
			},
			{
				"patchline": {
					"destination": ["obj-57", 0],
					"source": ["obj-56", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-58", 0],
					"source": ["obj-57", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-58", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-60", 0],
					"source": ["obj-59", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-60", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-62", 0],
					"source": ["obj-61", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-62", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-64", 0],
					"source": ["obj-63", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-64", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-63", 0],
					"source": ["obj-9", 14]
				}
			},
			{
				"patchline": {
					"destination": ["obj-10", 0],
					"source": ["obj-9", 15]
				}
			},
			{
				"patchline": {
					"destination": ["obj-65", 0],
					"source": ["obj-2", 0]
				}
			},
			{
				"patchline": {
					"destination": ["obj-66", 0],
					"source": ["obj-65", 1]
				}
			},
			{
				"patchline": {
					"destination": ["obj-7", 0],
					"source": ["obj-66", 0]
				}
			}
		],
		"minimum_live_version": "",
		"minimum_max_version": "",
		"objectsnaponopen": 1,
		"openinpresentation": 1,
		"platform_compatibility": 0,
		"rect": [100.0, 100.0, 1240.0, 720.0],
		"statusbarvisible": 2,
		"style": "",
		"subpatcher_template": "",
		"tags": "",
		"toolbarvisible": 1
	}
}
